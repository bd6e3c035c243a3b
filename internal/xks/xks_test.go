package xks_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/service"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
	"github.com/keygrid/keygrid-hsm/internal/xks"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

var aadNile = []byte("project=nile,department=marketing")

// TestEncryptDecrypt runs AES-GCM through XKS on a software key and on a
// SoftHSM2 key: round trips with and without AAD, the sizes the
// specification asks for, every tampering refused, the integrity value,
// and a rotation of the gateway key (old ciphertexts still decrypt).
func TestEncryptDecrypt(t *testing.T) {
	g := startGateway(t, "", true)
	s := g.main()
	for _, prov := range []string{"software", "hsm"} {
		t.Run(prov, func(t *testing.T) {
			key := "xks-" + prov
			k := g.aesKey(t, key, prov, 256)
			if prov == "hsm" && !strings.HasPrefix(k.Versions[0].ProviderRef, "pkcs11:token="+testbed.ProcessSoftHSM(t).Label) {
				t.Fatalf("the key is not on the token: %+v", k)
			}
			pt := []byte("Hello World! a 32-byte data key.")
			for _, aad := range [][]byte{nil, aadNile} {
				c := s.encrypt(t, key, pt, aad)
				if len(c.ct) != len(pt) || len(c.iv) != 12 || len(c.tag) != 16 || len(c.cm) == 0 || len(c.cm) > 20 {
					t.Fatalf("lengths: ct %d iv %d tag %d cm %d", len(c.ct), len(c.iv), len(c.tag), len(c.cm))
				}
				r := s.decrypt(t, key, c, aad)
				want(t, r, 200, "")
				if !bytes.Equal(r.b64(t, "plaintext"), pt) {
					t.Fatal("plaintext differs")
				}
				tamper(t, s, key, c, aad)
			}
			// The specification's minimum sizes.
			big, bigAAD := bytes.Repeat([]byte{7}, 4300), bytes.Repeat([]byte{9}, 8192)
			c := s.encrypt(t, key, big, bigAAD)
			if r := s.decrypt(t, key, c, bigAAD); r.status != 200 || !bytes.Equal(r.b64(t, "plaintext"), big) {
				t.Fatalf("4300 bytes with 8192 of AAD: %d %.200s", r.status, r.raw)
			}
			// The integrity value, computed here from the fields returned.
			body := encryptBody(pt, aadNile)
			body["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
			r := s.call(t, "/keys/"+key+"/encrypt", body)
			want(t, r, 200, "")
			sum := sha256.Sum256(bytes.Join([][]byte{aadNile, r.b64(t, "ciphertextMetadata"), r.b64(t, "initializationVector"),
				r.b64(t, "ciphertext"), r.b64(t, "authenticationTag")}, nil))
			if !bytes.Equal(r.b64(t, "ciphertextDataIntegrityValue"), sum[:]) {
				t.Fatal("ciphertextDataIntegrityValue is not the SHA-256 of AAD ‖ metadata ‖ IV ‖ ciphertext ‖ tag")
			}
			if _, ok := encryptBody(pt, nil)["ciphertextDataIntegrityValue"]; ok {
				t.Fatal("unreachable")
			}
			if r := s.call(t, "/keys/"+key+"/encrypt", encryptBody(pt, nil)); r.m["ciphertextDataIntegrityValue"] != nil {
				t.Fatal("an integrity value nobody asked for")
			}

			// Rotation: the new version encrypts, both decrypt, and one
			// version's metadata does not open the other's ciphertext.
			old := s.encrypt(t, key, pt, aadNile)
			if _, err := g.C.RotateKey(context.Background(), key); err != nil {
				t.Fatal(err)
			}
			fresh := s.encrypt(t, key, pt, aadNile)
			if bytes.Equal(old.cm, fresh.cm) {
				t.Fatal("the rotated key's ciphertext records the same version")
			}
			for name, c := range map[string]ciphertext{"before": old, "after": fresh} {
				if r := s.decrypt(t, key, c, aadNile); r.status != 200 || !bytes.Equal(r.b64(t, "plaintext"), pt) {
					t.Fatalf("ciphertext from %s the rotation: %d %s", name, r.status, r.raw)
				}
			}
			swapped := fresh
			swapped.cm = old.cm
			want(t, s.decrypt(t, key, swapped, aadNile), 400, xks.InvalidCiphertextException)
		})
	}
}

// tamper checks that every change to a ciphertext's parts is refused with
// InvalidCiphertextException.
func tamper(t *testing.T, s store, key string, c ciphertext, aad []byte) {
	t.Helper()
	flip := func(b []byte) []byte {
		out := append([]byte{}, b...)
		out[len(out)-1] ^= 1
		return out
	}
	other := []byte("project=nile,department=sales")
	cases := map[string]struct {
		c   ciphertext
		aad []byte
	}{
		"ciphertext":    {ciphertext{ct: flip(c.ct), cm: c.cm, iv: c.iv, tag: c.tag}, aad},
		"iv":            {ciphertext{ct: c.ct, cm: c.cm, iv: flip(c.iv), tag: c.tag}, aad},
		"tag":           {ciphertext{ct: c.ct, cm: c.cm, iv: c.iv, tag: flip(c.tag)}, aad},
		"metadata":      {ciphertext{ct: c.ct, cm: flip(c.cm), iv: c.iv, tag: c.tag}, aad},
		"no metadata":   {ciphertext{ct: c.ct, iv: c.iv, tag: c.tag}, aad},
		"metadata aad":  {ciphertext{ct: c.ct, iv: c.iv, tag: c.tag}, append(append([]byte{}, aad...), c.cm...)},
		"16-byte iv":    {ciphertext{ct: c.ct, cm: c.cm, iv: append(append([]byte{}, c.iv...), 0, 0, 0, 0), tag: c.tag}, aad},
		"shorter":       {ciphertext{ct: c.ct[:len(c.ct)-1], cm: c.cm, iv: c.iv, tag: c.tag}, aad},
		"aad changed":   {c, other},
		"aad added":     {c, append(append([]byte{}, aad...), 'x')},
		"aad removed":   {c, nil},
		"aad empty str": {c, []byte{}},
	}
	if len(aad) == 0 {
		delete(cases, "aad removed")
		delete(cases, "aad empty str") // empty and absent AAD are the same AAD
	}
	for name, tc := range cases {
		r := s.decrypt(t, key, tc.c, tc.aad)
		if r.status != 400 || r.errorName() != xks.InvalidCiphertextException {
			t.Errorf("tampered %s: %d %s", name, r.status, r.raw)
		}
	}
}

// TestErrorNames reaches every error name of the specification's table
// with a request that should produce it, and the 405 of a GET.
func TestErrorNames(t *testing.T) {
	g := startGateway(t, "", false)
	s := g.main()
	ctx := context.Background()
	g.aesKey(t, "xks-ok", "software", 256)
	g.aesKey(t, "xks-encrypt-only", "software", 256, "encrypt")
	g.aesKey(t, "xks-off", "software", 256)
	if _, err := g.C.DeactivateKey(ctx, "xks-off"); err != nil {
		t.Fatal(err)
	}
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "xks-rsa", KeySpec: apitypes.KeySpec{KeyType: "RSA", KeySize: 2048}}); err != nil {
		t.Fatal(err)
	}
	g.aesKey(t, "not-served", "software", 256)
	broken := g.aesKey(t, "xks-broken", "software", 256)
	// The keystore file of a key never used is damaged: the key manager
	// fails.
	files, _ := filepath.Glob(filepath.Join(g.DataDir, "keystore", "software", broken.Versions[0].ProviderRef+".key"))
	if len(files) != 1 {
		t.Fatalf("keystore file of %s: %v", broken.Versions[0].ProviderRef, files)
	}
	if err := os.WriteFile(files[0], []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	good := s.encrypt(t, "xks-ok", []byte("data key"), nil)
	badTag := good
	badTag.tag = bytes.Repeat([]byte{1}, 16)
	otherPrincipal := encryptBody([]byte("x"), nil)
	otherPrincipal["requestMetadata"].(map[string]any)["awsPrincipalArn"] = "arn:aws:iam::999999999999:user/Mallory"
	quota := g.store("/quota/kms/xks/v1", "us-east-1", credQuota)

	cases := []struct {
		name   string
		do     func() reply
		status int
		want   string
	}{
		{"ValidationException: encrypt without plaintext", func() reply {
			return s.call(t, "/keys/xks-ok/encrypt", map[string]any{"requestMetadata": md("Encrypt"), "encryptionAlgorithm": "AES_GCM"})
		}, 400, xks.ValidationException},
		{"ValidationException: health {}", func() reply { return s.call(t, "/health", "{}") }, 400, xks.ValidationException},
		{"ValidationException: health with empty requestMetadata", func() reply { return s.call(t, "/health", `{"requestMetadata":{}}`) }, 400, xks.ValidationException},
		{"ValidationException: not JSON", func() reply { return s.call(t, "/keys/xks-ok/metadata", "kms") }, 400, xks.ValidationException},
		{"InvalidStateException: deactivated key", func() reply { return s.call(t, "/keys/xks-off/encrypt", encryptBody([]byte("x"), nil)) }, 400, xks.InvalidStateException},
		{"InvalidCiphertextException: wrong tag", func() reply { return s.decrypt(t, "xks-ok", badTag, nil) }, 400, xks.InvalidCiphertextException},
		{"InvalidKeyUsageException: decrypt with an encrypt-only key", func() reply { return s.decrypt(t, "xks-encrypt-only", good, nil) }, 400, xks.InvalidKeyUsageException},
		{"InvalidKeyUsageException: an integrity value from an encrypt-only key", func() reply {
			b := encryptBody([]byte("x"), nil)
			b["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256"
			return s.call(t, "/keys/xks-encrypt-only/encrypt", b)
		}, 400, xks.InvalidKeyUsageException},
		{"AuthenticationFailedException: wrong secret", func() reply {
			return s.call(t, "/health", healthBody(), signOpts{cred: &cred{credMain1.id, credMain2.secret}})
		}, 401, xks.AuthenticationFailedException},
		{"AuthenticationFailedException: no signature", func() reply { return s.call(t, "/health", healthBody(), signOpts{unsigned: true}) }, 401, xks.AuthenticationFailedException},
		{"AccessDeniedException: principal outside the policy", func() reply { return s.call(t, "/keys/xks-ok/encrypt", otherPrincipal) }, 403, xks.AccessDeniedException},
		{"KeyNotFoundException: no such key", func() reply { return s.call(t, "/keys/xks-none/encrypt", encryptBody([]byte("x"), nil)) }, 404, xks.KeyNotFoundException},
		{"KeyNotFoundException: a key the store does not serve", func() reply {
			return s.call(t, "/keys/not-served/metadata", map[string]any{"requestMetadata": md("DescribeKey")})
		}, 404, xks.KeyNotFoundException},
		{"KeyNotFoundException: not an AES key", func() reply { return s.call(t, "/keys/xks-rsa/encrypt", encryptBody([]byte("x"), nil)) }, 404, xks.KeyNotFoundException},
		{"InvalidUriPathException: unknown prefix", func() reply {
			return g.store("/nope/kms/xks/v1", "us-east-1", credMain1).call(t, "/health", healthBody())
		}, 404, xks.InvalidURIPathException},
		{"InvalidUriPathException: unknown operation", func() reply { return s.call(t, "/keys/xks-ok/sign", encryptBody([]byte("x"), nil)) }, 404, xks.InvalidURIPathException},
		{"InvalidUriPathException: before authentication", func() reply {
			return g.store("/nope/kms/xks/v1", "us-east-1", credMain1).call(t, "/health", healthBody(), signOpts{unsigned: true})
		}, 404, xks.InvalidURIPathException},
		{"ThrottlingException: over the store's quota", func() reply {
			var last reply
			for range 10 {
				if last = quota.call(t, "/health", healthBody()); last.status == 429 {
					break
				}
			}
			return last
		}, 429, xks.ThrottlingException},
		{"UnsupportedOperationException: plaintext above the maximum", func() reply {
			return s.call(t, "/keys/xks-ok/encrypt", encryptBody(make([]byte, xks.MaxPlaintext+1), nil))
		}, 501, xks.UnsupportedOperationException},
		{"UnsupportedOperationException: another algorithm", func() reply {
			b := encryptBody([]byte("x"), nil)
			b["encryptionAlgorithm"] = "AES_CBC"
			return s.call(t, "/keys/xks-ok/encrypt", b)
		}, 501, xks.UnsupportedOperationException},
		{"InternalException: the key manager fails", func() reply { return s.call(t, "/keys/xks-broken/encrypt", encryptBody([]byte("x"), nil)) }, 500, xks.InternalException},
		{"405 for GET", func() reply { return s.call(t, "/health", healthBody(), signOpts{method: http.MethodGet}) }, 405, xks.ValidationException},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.do()
			want(t, r, tc.status, tc.want)
			if tc.status == 405 && r.header.Get("Allow") != "POST" {
				t.Fatalf("Allow %q", r.header.Get("Allow"))
			}
		})
	}

	t.Run("DependencyTimeoutException: the request deadline passes", func(t *testing.T) {
		// A gateway whose requests have no time at all: the metadata store
		// does not answer within the deadline.
		slow := startGateway(t, "server:\n  request_timeout: 1ns\n", false)
		admin := service.WithCaller(ctx, service.Caller{Auth: &auth.Principal{Name: "t", Role: auth.RoleAdmin}})
		if _, err := slow.srv.Service().CreateKey(admin, service.CreateKeyRequest{Name: "xks-slow", Spec: service.KeySpec{KeyType: "AES", KeySize: 256}}); err != nil {
			t.Fatal(err)
		}
		want(t, slow.main().call(t, "/keys/xks-slow/encrypt", encryptBody([]byte("x"), nil)), 503, xks.DependencyTimeoutException)
	})
}

// TestSigV4 checks signatures from curl --aws-sigv4 and from smithy-go's
// signer, both credentials of a store, and a refusal for every change to a
// signed part.
func TestSigV4(t *testing.T) {
	testbed.Require(t, "curl")
	g := startGateway(t, "", false)
	g.aesKey(t, "xks-curl", "software", 256)
	g.aesKey(t, "open-curl", "software", 256)
	s := g.main()

	t.Run("curl", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			url  string
			c    cred
			reg  string
		}{
			{"prefix", g.URL + "/example/uri/path/prefix/kms/xks/v1", credMain1, "us-east-1"},
			{"second credential", g.URL + "/example/uri/path/prefix/kms/xks/v1", credMain2, "us-east-1"},
			{"empty prefix", g.URL + "/kms/xks/v1", credOpen, "eu-west-1"},
			{"empty prefix, double slash", g.URL + "//kms/xks/v1", credOpen, "eu-west-1"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				key := "xks-curl"
				if tc.c == credOpen {
					key = "open-curl"
				}
				status, out := curl(t, tc.url+"/health", tc.c, tc.reg, healthBody())
				if status != 200 || !strings.Contains(out, `"ekmFleetDetails"`) {
					t.Fatalf("health: %d %s", status, out)
				}
				status, out = curl(t, tc.url+"/keys/"+key+"/encrypt", tc.c, tc.reg, encryptBody([]byte("Hello World!"), aadNile))
				if status != 200 {
					t.Fatalf("encrypt: %d %s", status, out)
				}
				var enc map[string][]byte
				if err := json.Unmarshal([]byte(lastLine(out)), &enc); err != nil {
					t.Fatal(err)
				}
				c := ciphertext{ct: enc["ciphertext"], cm: enc["ciphertextMetadata"], iv: enc["initializationVector"], tag: enc["authenticationTag"]}
				status, out = curl(t, tc.url+"/keys/"+key+"/decrypt", tc.c, tc.reg, decryptBody(c, aadNile))
				var dec map[string][]byte
				if status != 200 || json.Unmarshal([]byte(lastLine(out)), &dec) != nil || string(dec["plaintext"]) != "Hello World!" {
					t.Fatalf("decrypt: %d %s", status, out)
				}
				status, out = curl(t, tc.url+"/health", cred{tc.c.id, credQuota.secret}, tc.reg, healthBody())
				if status != 401 || !strings.Contains(out, xks.AuthenticationFailedException) {
					t.Fatalf("curl with a wrong secret: %d %s", status, out)
				}
			})
		}
	})

	t.Run("smithy signer", func(t *testing.T) {
		want(t, s.call(t, "/health", healthBody()), 200, "")
		want(t, s.call(t, "/health", healthBody(), signOpts{cred: &credMain2}), 200, "")
		// An empty prefix, with the double slash of endpoint + "/" + "".
		for _, p := range []string{"/kms/xks/v1", "//kms/xks/v1"} {
			r := g.store(p, "eu-west-1", credOpen).call(t, "/health", healthBody())
			want(t, r, 200, "")
		}
		want(t, s.call(t, "/health", healthBody(), signOpts{signed: []string{"content-type", "user-agent-x"}}), 200, "")
		// An unsigned header may change.
		want(t, s.call(t, "/health", healthBody(), signOpts{after: func(r *http.Request) { r.Header.Set("User-Agent", "changed") }}), 200, "")
		// Within the five minutes either way.
		want(t, s.call(t, "/health", healthBody(), signOpts{at: time.Now().Add(-4 * time.Minute)}), 200, "")
		want(t, s.call(t, "/health", healthBody(), signOpts{at: time.Now().Add(4 * time.Minute)}), 200, "")
	})

	refusals := []struct {
		name string
		o    signOpts
	}{
		{"body changed", signOpts{after: func(r *http.Request) {
			b := []byte(`{"requestMetadata":{"kmsRequestId":"other","kmsOperation":"KmsHealthCheck"}}`)
			r.Body, r.ContentLength = readCloser(b), int64(len(b))
		}}},
		{"path changed", signOpts{after: func(r *http.Request) {
			r.URL.Path = strings.Replace(r.URL.Path, "/health", "/keys/xks-curl/metadata", 1)
		}}},
		{"host changed", signOpts{after: func(r *http.Request) { r.Host = strings.Replace(r.URL.Host, "127.0.0.1", "localhost", 1) }}},
		{"date changed", signOpts{after: func(r *http.Request) {
			r.Header.Set("X-Amz-Date", time.Now().UTC().Add(-time.Minute).Format("20060102T150405Z"))
		}}},
		{"signed content-type changed", signOpts{signed: []string{"content-type"}, after: func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }}},
		{"signed header removed", signOpts{signed: []string{"content-type"}, after: func(r *http.Request) { r.Header.Del("Content-Type") }}},
		{"signature changed", signOpts{after: func(r *http.Request) {
			a := r.Header.Get("Authorization")
			last := a[len(a)-1]
			r.Header.Set("Authorization", a[:len(a)-1]+map[bool]string{true: "1", false: "0"}[last == '0'])
		}}},
		{"signed headers edited", signOpts{after: func(r *http.Request) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "SignedHeaders=host;x-amz-date", "SignedHeaders=content-type;host;x-amz-date", 1))
		}}},
		{"two Authorization headers", signOpts{after: func(r *http.Request) { r.Header.Add("Authorization", r.Header.Get("Authorization")) }}},
		{"other region", signOpts{region: "us-west-2"}},
		{"other service", signOpts{service: "kms"}},
		{"another store's credential", signOpts{cred: &credOpen}},
		{"unknown access key id", signOpts{cred: &cred{"UNKNOWNACCESSKEYID2345", credMain1.secret}}},
		{"six minutes old", signOpts{at: time.Now().Add(-6 * time.Minute)}},
		{"six minutes ahead", signOpts{at: time.Now().Add(6 * time.Minute)}},
		// The SDK signer never signs User-Agent: such a signature cannot be
		// checked, and is refused rather than half-checked.
		{"User-Agent signed", signOpts{set: map[string]string{"User-Agent": "kms"}, signed: []string{"user-agent"}}},
	}
	for _, tc := range refusals {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			want(t, s.call(t, "/health", healthBody(), tc.o), 401, xks.AuthenticationFailedException)
		})
	}
}

func readCloser(b []byte) *nopCloser { return &nopCloser{bytes.NewReader(b)} }

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// curl sends body with curl --aws-sigv4 as AWS's compliance client does,
// returning the status and the body.
func curl(t *testing.T, url string, c cred, region string, body any) (int, string) {
	t.Helper()
	raw, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in, out := filepath.Join(dir, "req.json"), filepath.Join(dir, "resp.json")
	if err := os.WriteFile(in, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("curl", "-s", "--aws-sigv4", "aws:amz:"+region+":kms-xks-proxy", "--user", c.id+":"+c.secret,
		"-X", "POST", "-H", "Content-Type:application/json", "--data", "@"+in, "-o", out, "-w", "%{http_code}", url)
	code, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl: %v", err)
	}
	resp, _ := os.ReadFile(out)
	var status int
	fmt.Sscanf(string(code), "%d", &status)
	return status, string(resp)
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// TestMetadata checks GetKeyMetadata: spec, usage and status from the
// gateway key.
func TestMetadata(t *testing.T) {
	g := startGateway(t, "", false)
	s := g.main()
	ctx := context.Background()
	g.aesKey(t, "xks-256", "software", 256)
	g.aesKey(t, "xks-128", "software", 128, "encrypt", "decrypt", "wrap", "unwrap")
	g.aesKey(t, "xks-enc", "software", 256, "encrypt")
	g.aesKey(t, "xks-off", "software", 256)
	if _, err := g.C.DeactivateKey(ctx, "xks-off"); err != nil {
		t.Fatal(err)
	}
	body := map[string]any{"requestMetadata": map[string]any{"awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
		"kmsOperation": "CreateKey", "kmsRequestId": ""}} // no kmsKeyArn at CreateKey; an empty request id is opaque too
	for key, w := range map[string]string{
		"xks-256": `{"keySpec":"AES_256","keyUsage":["ENCRYPT","DECRYPT"],"keyStatus":"ENABLED"}`,
		"xks-128": `{"keySpec":"AES_128","keyUsage":["ENCRYPT","DECRYPT","WRAP","UNWRAP"],"keyStatus":"ENABLED"}`,
		"xks-enc": `{"keySpec":"AES_256","keyUsage":["ENCRYPT"],"keyStatus":"ENABLED"}`,
		"xks-off": `{"keySpec":"AES_256","keyUsage":["ENCRYPT","DECRYPT"],"keyStatus":"DISABLED"}`,
	} {
		r := s.call(t, "/keys/"+key+"/metadata", body)
		if r.status != 200 || strings.TrimSpace(string(r.raw)) != w {
			t.Errorf("%s: %d %s, want %s", key, r.status, r.raw, w)
		}
	}
	// Unknown fields and kmsOperation values are accepted.
	body["requestMetadata"].(map[string]any)["kmsOperation"] = "BulkDescribeKey"
	body["requestMetadata"].(map[string]any)["kmsFutureField"] = map[string]any{"x": []int{1}}
	body["somethingNew"] = true
	want(t, s.call(t, "/keys/xks-256/metadata", body), 200, "")
	// The key's id is not an externalKeyId: names are.
	k, _ := g.C.GetKey(ctx, "xks-256")
	want(t, s.call(t, "/keys/"+k.ID+"/metadata", body), 404, xks.KeyNotFoundException)

	// An expired key is DISABLED and encrypts no more, but still decrypts
	// what it encrypted.
	exp := time.Now().Add(1500 * time.Millisecond)
	if _, err := g.C.CreateKey(ctx, apitypes.CreateKeyRequest{Name: "xks-exp", ExpiresAt: &exp,
		KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"encrypt", "decrypt"}}}); err != nil {
		t.Fatal(err)
	}
	c := s.encrypt(t, "xks-exp", []byte("before expiry"), nil)
	time.Sleep(time.Until(exp) + 100*time.Millisecond)
	if r := s.call(t, "/keys/xks-exp/metadata", body); r.m["keyStatus"] != "DISABLED" {
		t.Fatalf("expired key: %s", r.raw)
	}
	want(t, s.call(t, "/keys/xks-exp/encrypt", encryptBody([]byte("x"), nil)), 400, xks.InvalidStateException)
	if r := s.decrypt(t, "xks-exp", c, nil); r.status != 200 || string(r.b64(t, "plaintext")) != "before expiry" {
		t.Fatalf("decrypt after expiry: %d %s", r.status, r.raw)
	}
}

// TestPolicy checks the secondary authorization: principals, operations
// and via services; health is exempt.
func TestPolicy(t *testing.T) {
	g := startGateway(t, "", false)
	g.aesKey(t, "xks-p", "software", 256)
	main, ops := g.main(), g.store("/ops/v2_store/kms/xks/v1", "us-east-1", credOps)
	with := func(op string, edit func(m map[string]any)) map[string]any {
		b := encryptBody([]byte("x"), nil)
		m := b["requestMetadata"].(map[string]any)
		m["kmsOperation"] = op
		edit(m)
		return b
	}
	cases := []struct {
		name string
		s    store
		body map[string]any
		ok   bool
	}{
		{"principal in the account", main, with("Encrypt", func(map[string]any) {}), true},
		{"role in the account", main, with("Encrypt", func(m map[string]any) { m["awsPrincipalArn"] = "arn:aws:iam::123456789012:role/app/x" }), true},
		{"principal of another account", main, with("Encrypt", func(m map[string]any) { m["awsPrincipalArn"] = "arn:aws:iam::123456789013:user/Alice" }), false},
		{"service principal", main, with("Encrypt", func(m map[string]any) { m["awsPrincipalArn"] = "ec2.amazonaws.com" }), false},
		{"listed operation", ops, with("GenerateDataKey", func(map[string]any) {}), true},
		{"operation not listed", ops, with("ReEncrypt", func(map[string]any) {}), false},
		{"new operation not listed", ops, with("BulkEncrypt", func(map[string]any) {}), false},
		{"listed via service", ops, with("Encrypt", func(m map[string]any) { m["kmsViaService"] = "ebs" }), true},
		{"other via service", ops, with("Encrypt", func(m map[string]any) { m["kmsViaService"] = "s3" }), false},
		{"direct call (no via service) allowed by \"\"", ops, with("Encrypt", func(m map[string]any) { delete(m, "kmsViaService") }), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.s.call(t, "/keys/xks-p/encrypt", tc.body)
			if tc.ok {
				want(t, r, 200, "")
			} else {
				want(t, r, 403, xks.AccessDeniedException)
			}
		})
	}
	// Health is exempt, whoever asks.
	want(t, main.call(t, "/health", healthBody()), 200, "")
}

// TestQuota checks the store's quota: beyond rate_per_second,
// ThrottlingException; the other stores are not affected; the quota
// refills.
func TestQuota(t *testing.T) {
	g := startGateway(t, "", false)
	q := g.store("/quota/kms/xks/v1", "us-east-1", credQuota)
	var ok, throttled int
	for range 12 {
		switch r := q.call(t, "/health", healthBody()); r.status {
		case 200:
			ok++
		case 429:
			want(t, r, 429, xks.ThrottlingException)
			throttled++
		default:
			t.Fatalf("%d %s", r.status, r.raw)
		}
	}
	// 2 per second with a burst of 2: the test's twelve calls take well
	// under the time that would refill ten.
	if throttled == 0 || ok < 2 {
		t.Fatalf("%d answered, %d throttled", ok, throttled)
	}
	for range 5 {
		want(t, g.main().call(t, "/health", healthBody()), 200, "")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := q.call(t, "/health", healthBody())
		if r.status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the quota did not refill")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestHealth checks GetHealthStatus: one entry per provider with
// AES-GCM, ACTIVE; a provider whose health check fails is UNAVAILABLE and
// comes back ACTIVE.
func TestHealth(t *testing.T) {
	g := startGateway(t, "health:\n  interval: 100ms\n  timeout: 2s\n", true)
	s := g.main()
	status := func() map[string]string {
		r := s.call(t, "/health", healthBody())
		want(t, r, 200, "")
		var h struct {
			FleetSize int    `json:"xksProxyFleetSize"`
			Vendor    string `json:"xksProxyVendor"`
			Model     string `json:"xksProxyModel"`
			EKMVendor string `json:"ekmVendor"`
			Fleet     []struct {
				ID, Model, HealthStatus string
			} `json:"ekmFleetDetails"`
		}
		if err := json.Unmarshal(r.raw, &h); err != nil {
			t.Fatal(err)
		}
		if h.FleetSize < 1 || h.Vendor == "" || h.Model == "" || h.EKMVendor == "" || len(h.Fleet) < 1 || len(h.Fleet) > 10 {
			t.Fatalf("health: %s", r.raw)
		}
		out := map[string]string{}
		for _, f := range h.Fleet {
			if f.ID == "" || f.Model == "" {
				t.Fatalf("entry %+v", f)
			}
			out[f.ID] = f.HealthStatus
		}
		return out
	}
	waitFor := func(want map[string]string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := status()
			if fmt.Sprint(got) == fmt.Sprint(want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("health %v, want %v", got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor(map[string]string{"hsm": "ACTIVE", "software": "ACTIVE"})
	// The probe keys are no managed keys.
	if l, err := g.C.ListKeys(context.Background(), client.ListOptions{}); err != nil || len(l.Keys) != 0 {
		t.Fatalf("keys after health checks: %+v %v", l, err)
	}
	// The software keystore's check file goes away: its provider's health
	// check fails.
	check, _ := filepath.Glob(filepath.Join(g.DataDir, "keystore", "software", "master.check"))
	if len(check) != 1 {
		t.Fatalf("master.check: %v", check)
	}
	if err := os.Rename(check[0], check[0]+".away"); err != nil {
		t.Fatal(err)
	}
	waitFor(map[string]string{"hsm": "ACTIVE", "software": "UNAVAILABLE"})
	if err := os.Rename(check[0]+".away", check[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(map[string]string{"hsm": "ACTIVE", "software": "ACTIVE"})
}

// TestAudit checks that every XKS call is one audit record with the
// store, KMS's metadata and the error name, and that no plaintext reaches
// the log.
func TestAudit(t *testing.T) {
	g := startGateway(t, "", false)
	s := g.main()
	g.aesKey(t, "xks-a", "software", 256)
	pt := []byte("plaintext that must never be logged")
	calls := []struct {
		rel, op, errName string
		body             map[string]any
	}{
		{"/keys/xks-a/metadata", "xks_metadata", "", map[string]any{"requestMetadata": md("DescribeKey")}},
		{"/keys/xks-a/encrypt", "encrypt", "", encryptBody(pt, aadNile)},
		{"/keys/xks-none/encrypt", "encrypt", xks.KeyNotFoundException, encryptBody(pt, nil)},
		{"/keys/xks-a/decrypt", "decrypt", xks.InvalidCiphertextException, decryptBody(ciphertext{ct: []byte("xx"), cm: []byte("KG\x01\x00\x00\x00\x01"), iv: make([]byte, 12), tag: make([]byte, 16)}, nil)},
		{"/keys/xks-a/encrypt", "encrypt", xks.ValidationException, map[string]any{"requestMetadata": md("Encrypt")}},
		{"/health", "xks_health", "", healthBody()},
	}
	before := len(readAudit(t, g))
	var ids []string
	for _, c := range calls {
		m := c.body["requestMetadata"].(map[string]any)
		id := fmt.Sprintf("kms-%s-%d", c.op, len(ids))
		m["kmsRequestId"] = id
		ids = append(ids, id)
		r := s.call(t, c.rel, c.body)
		if r.errorName() != c.errName {
			t.Fatalf("%s: %s", c.rel, r.raw)
		}
	}
	r := s.call(t, "/health", healthBody(), signOpts{cred: &cred{credMain1.id, credMain2.secret}})
	want(t, r, 401, xks.AuthenticationFailedException)

	recs := readAudit(t, g)[before:]
	if len(recs) != len(calls)+1 {
		t.Fatalf("%d records for %d calls: %+v", len(recs), len(calls)+1, recs)
	}
	for i, c := range calls {
		e := recs[i]
		a := e.Attributes
		if e.Operation != c.op || e.ErrorName != c.errName || a["store"] != "main" || a["kmsRequestId"] != ids[i] ||
			a["accessKeyId"] != credMain1.id || a["kmsOperation"] == "" || e.Principal != "xks:main" || e.RequestID == "" {
			t.Errorf("record %d: %+v", i, e)
		}
		if c.op != "xks_health" && (a["kmsKeyArn"] == "" || a["awsPrincipalArn"] == "") {
			t.Errorf("record %d has no kmsKeyArn or awsPrincipalArn: %+v", i, e)
		}
		if (c.errName == "") != (e.Outcome == audit.OutcomeSuccess) {
			t.Errorf("record %d: outcome %s", i, e.Outcome)
		}
	}
	if recs[1].KeyName != "xks-a" || recs[1].KeyVersion != 1 || recs[2].KeyName != "xks-none" {
		t.Errorf("keys: %+v %+v", recs[1], recs[2])
	}
	last := recs[len(recs)-1]
	if last.Operation != "authenticate" || last.Outcome != audit.OutcomeDenied || last.ErrorName != xks.AuthenticationFailedException || last.Attributes["store"] != "main" {
		t.Errorf("authentication failure: %+v", last)
	}
	log, _ := os.ReadFile(filepath.Join(g.DataDir, "audit.log"))
	if bytes.Contains(log, pt) || bytes.Contains(log, []byte(base64.StdEncoding.EncodeToString(pt))) ||
		bytes.Contains(log, []byte(credMain1.secret)) || bytes.Contains(log, []byte(credMain2.secret)) {
		t.Fatal("plaintext or a secret in the audit log")
	}
	f, _ := os.Open(filepath.Join(g.DataDir, "audit.log"))
	defer f.Close()
	if _, _, err := audit.Verify(f, ""); err != nil {
		t.Fatal(err)
	}
	// The metrics count calls by store, operation and error name.
	resp, err := http.Get(g.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	for _, line := range []string{
		`keygrid_xks_requests_total{error="",operation="encrypt",store="main"} 1`,
		`keygrid_xks_requests_total{error="KeyNotFoundException",operation="encrypt",store="main"} 1`,
		`keygrid_xks_requests_total{error="AuthenticationFailedException",operation="health",store="main"} 1`,
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("metrics lack %s", line)
		}
	}
}

func readAudit(t *testing.T, g *gateway) []audit.Event {
	t.Helper()
	f, err := os.Open(filepath.Join(g.DataDir, "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e audit.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// TestConcurrent runs encrypts and decrypts from many goroutines on one
// SoftHSM2 key (the benchmark's shape, as a test of correctness).
func TestConcurrent(t *testing.T) {
	g := startGateway(t, "", true)
	s := g.main()
	g.aesKey(t, "xks-many", "hsm", 256)
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				pt := []byte(fmt.Sprintf("worker %d call %d", w, i))
				r := s.call(t, "/keys/xks-many/encrypt", encryptBody(pt, aadNile))
				if r.status != 200 {
					errs <- string(r.raw)
					return
				}
				c := ciphertext{ct: r.b64(t, "ciphertext"), cm: r.b64(t, "ciphertextMetadata"), iv: r.b64(t, "initializationVector"), tag: r.b64(t, "authenticationTag")}
				if d := s.decrypt(t, "xks-many", c, aadNile); d.status != 200 || !bytes.Equal(d.b64(t, "plaintext"), pt) {
					errs <- string(d.raw)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}
