package software

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/store"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// apiTokens maps a test server's URL to the admin token its gateway made.
var apiTokens sync.Map

// apiCall sends a JSON request with the gateway's admin token and decodes a
// JSON answer, failing t unless the status is want.
func apiCall(t *testing.T, base, method, path string, body any, want int, out any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if tok, ok := apiTokens.Load(base); ok {
		req.Header.Set("Authorization", "Bearer "+tok.(string))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
}

// readTree returns the contents of every regular file under dir.
func readTree(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files[path] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// encodings returns the byte strings under which secret could appear in a
// file: raw, standard base64 (at each of the three alignments it can have
// inside a longer base64 text, so only the characters that depend on secret
// alone) and hex in both cases.
func encodings(secret []byte) map[string][]byte {
	out := map[string][]byte{
		"raw":       secret,
		"hex":       []byte(hex.EncodeToString(secret)),
		"HEX":       []byte(strings.ToUpper(hex.EncodeToString(secret))),
		"base64":    []byte(base64.StdEncoding.EncodeToString(secret)),
		"base64url": []byte(base64.RawURLEncoding.EncodeToString(secret)),
	}
	for shift := range 3 {
		enc := base64.StdEncoding.EncodeToString(append(make([]byte, shift), secret...))
		// Only whole groups of three bytes of secret: skip the first group
		// when it mixes in shift bytes, and the last, partial one (it
		// depends on what follows).
		start, end := 0, (shift+len(secret))/3*4
		if shift > 0 {
			start = 4
		}
		out[fmt.Sprintf("base64 at offset %d mod 3", shift)] = []byte(enc[start:end])
	}
	return out
}

// secretsOf returns the secret byte strings of a private or secret key.
func secretsOf(t *testing.T, k any) map[string][]byte {
	t.Helper()
	s := map[string][]byte{}
	pkcs8 := func(priv any) {
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		s["PKCS#8"] = der
	}
	switch key := k.(type) {
	case *rsa.PrivateKey:
		pkcs8(key)
		s["PKCS#1"] = x509.MarshalPKCS1PrivateKey(key)
		s["D"] = key.D.Bytes()
		for i, p := range key.Primes {
			s[fmt.Sprintf("prime %d", i)] = p.Bytes()
		}
		key.Precompute()
		s["Dp"], s["Dq"], s["Qinv"] = key.Precomputed.Dp.Bytes(), key.Precomputed.Dq.Bytes(), key.Precomputed.Qinv.Bytes()
	case *ecdsa.PrivateKey:
		pkcs8(key)
		sec1, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		s["SEC1"] = sec1
		d, err := key.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		s["D"] = d
		if trimmed := bytes.TrimLeft(d, "\x00"); len(trimmed) != len(d) {
			s["D unpadded"] = trimmed
		}
	case ed25519.PrivateKey:
		pkcs8(key)
		s["seed"] = key.Seed()
		s["private key"] = key
	case *aesKey:
		s["AES key"] = key.raw
	default:
		t.Fatalf("unexpected key type %T", k)
	}
	return s
}

// TestNoPrivateKeyBytesInDataDir runs a real server on a data directory,
// creates and uses a key of each type through the HTTP API, and then looks
// in every file under the data directory for the keys' secret bytes in any
// of the encodings an accident would use.
func TestNoPrivateKeyBytesInDataDir(t *testing.T) {
	tmp := t.TempDir()
	cfg, err := config.Load("", config.Flags{DataDir: tmp, Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(tmp, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	log := slog.New(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := server.New(t.Context(), cfg, provider.Registry{"software": New}, log, "test")
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	closed := false
	defer func() {
		if !closed {
			srv.Close()
		}
	}()
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	tok, err := os.ReadFile(cfg.Auth.AdminTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	apiTokens.Store(hs.URL, strings.TrimSpace(string(tok)))

	// Secrets the callers send must not be kept either.
	callerSecrets := map[string][]byte{}
	fresh := func(name string, n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		callerSecrets[name] = b
		return b
	}

	keys := []struct {
		name string
		spec apitypes.KeySpec
	}{
		{"rsa-2048", apitypes.KeySpec{KeyType: "RSA", KeySize: 2048, Usage: []string{"sign", "verify", "encrypt", "decrypt"}}},
		{"ec-p256", apitypes.KeySpec{KeyType: "EC", Curve: "P-256"}},
		{"ec-p384", apitypes.KeySpec{KeyType: "EC", Curve: "P-384"}},
		{"ec-p521", apitypes.KeySpec{KeyType: "EC", KeySize: 521}},
		{"ed25519", apitypes.KeySpec{KeyType: "Ed25519"}},
		{"aes-128", apitypes.KeySpec{KeyType: "AES", KeySize: 128}},
		{"aes-256", apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"encrypt", "decrypt", "wrap", "unwrap"}}},
	}
	for _, k := range keys {
		var key apitypes.Key
		apiCall(t, hs.URL, "POST", "/api/v1/keys", apitypes.CreateKeyRequest{Name: k.name, KeySpec: k.spec}, http.StatusCreated, &key)
		path := "/api/v1/keys/" + key.ID
		switch key.KeyType {
		case "AES":
			pt := fresh(k.name+" plaintext", 32)
			var enc apitypes.EncryptResponse
			apiCall(t, hs.URL, "POST", path+"/encrypt", apitypes.EncryptRequest{Plaintext: pt, AAD: []byte("aad")}, http.StatusOK, &enc)
			var dec apitypes.DecryptResponse
			apiCall(t, hs.URL, "POST", path+"/decrypt", apitypes.DecryptRequest{Ciphertext: enc.Ciphertext, AAD: []byte("aad")}, http.StatusOK, &dec)
			if !bytes.Equal(dec.Plaintext, pt) {
				t.Fatalf("%s: decrypt returned other plaintext", k.name)
			}
			if slices.Contains(key.Usage, "wrap") {
				m := fresh(k.name+" wrapped key material", 32)
				var w apitypes.WrapResponse
				apiCall(t, hs.URL, "POST", path+"/wrap", apitypes.WrapRequest{KeyMaterial: m}, http.StatusOK, &w)
				var u apitypes.UnwrapResponse
				apiCall(t, hs.URL, "POST", path+"/unwrap", apitypes.UnwrapRequest{WrappedKey: w.WrappedKey}, http.StatusOK, &u)
				if !bytes.Equal(u.KeyMaterial, m) {
					t.Fatalf("%s: unwrap returned other key material", k.name)
				}
			}
		default:
			var sig apitypes.SignResponse
			apiCall(t, hs.URL, "POST", path+"/sign", apitypes.SignRequest{Data: []byte("data of " + k.name)}, http.StatusOK, &sig)
			var v apitypes.VerifyResponse
			apiCall(t, hs.URL, "POST", path+"/verify", apitypes.VerifyRequest{Data: []byte("data of " + k.name), Signature: sig.Signature}, http.StatusOK, &v)
			if !v.Valid {
				t.Fatalf("%s: own signature does not verify", k.name)
			}
			if slices.Contains(key.Usage, "decrypt") {
				pt := fresh(k.name+" plaintext", 32)
				var enc apitypes.EncryptResponse
				apiCall(t, hs.URL, "POST", path+"/encrypt", apitypes.EncryptRequest{Plaintext: pt, Algorithm: string(alg.RSAOAEP256)}, http.StatusOK, &enc)
				var dec apitypes.DecryptResponse
				apiCall(t, hs.URL, "POST", path+"/decrypt", apitypes.DecryptRequest{Ciphertext: enc.Ciphertext, Algorithm: string(alg.RSAOAEP256)}, http.StatusOK, &dec)
				if !bytes.Equal(dec.Plaintext, pt) {
					t.Fatalf("%s: decrypt returned other plaintext", k.name)
				}
			}
		}
	}
	var list apitypes.KeyList
	apiCall(t, hs.URL, "GET", "/api/v1/keys", nil, http.StatusOK, &list)
	if len(list.Keys) != len(keys) {
		t.Fatalf("GET /api/v1/keys lists %d keys, want %d", len(list.Keys), len(keys))
	}
	var apiSpecs []string
	for _, k := range list.Keys {
		s, err := alg.NewSpec(k.KeyType, k.KeySize, k.Curve)
		if err != nil {
			t.Fatalf("key %s: %v", k.ID, err)
		}
		apiSpecs = append(apiSpecs, s.String())
	}
	// The audit signing key is no key of the API, but it lives in the same
	// keystore and its secret must not leak either.
	cs, ok := store.Checkpoints(srv.Store())
	if !ok {
		t.Fatal("the store keeps no audit keys")
	}
	aks, err := cs.AuditKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(aks) != 1 {
		t.Fatalf("%d audit keys, want 1", len(aks))
	}
	for _, ak := range aks {
		pub, err := x509.ParsePKIXPublicKey(ak.PublicKey)
		if err != nil {
			t.Fatalf("audit key %s: %v", ak.Ref, err)
		}
		ec, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			t.Fatalf("audit key %s is a %T", ak.Ref, pub)
		}
		s, err := alg.NewSpec("EC", 0, ec.Curve.Params().Name)
		if err != nil {
			t.Fatal(err)
		}
		apiSpecs = append(apiSpecs, s.String())
	}

	// The files while the server runs (SQLite's -wal and -shm exist now)
	// and after it closed.
	before := readTree(t, tmp)
	hs.Close()
	if err := srv.Close(); err != nil {
		t.Fatalf("srv.Close: %v", err)
	}
	closed = true
	logFile.Sync()
	after := readTree(t, tmp)

	// Open the keystore as the server left it and take out the real keys.
	mkText, err := os.ReadFile(filepath.Join(tmp, "master.key"))
	if err != nil {
		t.Fatal(err)
	}
	mk, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(mkText)))
	if err != nil {
		t.Fatalf("master.key: %v", err)
	}
	dir := filepath.Join(tmp, "keystore", "software")
	p, err := Open("software", dir, mk)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	keyFileName := regexp.MustCompile(`^([0-9a-f]{32})\.key$`)
	secrets := map[string][]byte{}
	var storeSpecs []string
	for _, e := range entries {
		m := keyFileName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		ref := m[1]
		f, err := p.readKeyFile(ref)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := parseSpecString(f.Spec)
		if err != nil {
			t.Fatal(err)
		}
		storeSpecs = append(storeSpecs, spec.String())
		k, err := p.load(ref, spec)
		if err != nil {
			t.Fatalf("load %s (%s): %v", ref, spec, err)
		}
		for what, b := range secretsOf(t, k) {
			if len(b) < 16 {
				t.Fatalf("%s %s %s is only %d bytes: too short to search for", ref, spec, what, len(b))
			}
			secrets[fmt.Sprintf("%s key %s: %s", spec, ref, what)] = b
		}
	}
	slices.Sort(apiSpecs)
	slices.Sort(storeSpecs)
	if !slices.Equal(apiSpecs, storeSpecs) {
		t.Fatalf("keystore holds %v, the API lists %v", storeSpecs, apiSpecs)
	}
	if len(storeSpecs) < 7 {
		t.Fatalf("only %d keys checked, want at least 7", len(storeSpecs))
	}
	for what, b := range callerSecrets {
		secrets["caller's "+what] = b
	}

	// The search must be able to find what it looks for: one of the
	// secrets, base64 inside a JSON document, in a file of its own.
	var some string
	for what := range secrets {
		some = what
		break
	}
	planted := map[string][]byte{"planted": fmt.Appendf(nil, `{"x":"%s"}`, base64.StdEncoding.EncodeToString(append([]byte{1}, secrets[some]...)))}
	if len(findSecrets(planted, secrets)) == 0 {
		t.Fatalf("the search does not find %s planted as base64", some)
	}

	for _, snapshot := range []struct {
		when  string
		files map[string][]byte
	}{{"while serving", before}, {"after close", after}} {
		if len(snapshot.files) == 0 {
			t.Fatalf("%s: no files under the data directory", snapshot.when)
		}
		for _, f := range findSecrets(snapshot.files, secrets) {
			t.Errorf("%s: %s", snapshot.when, f)
		}
		t.Logf("%s: searched %d files for %d secrets", snapshot.when, len(snapshot.files), len(secrets))
	}
}

// findSecrets describes every place a secret (or "PRIVATE KEY") occurs in
// files.
func findSecrets(files map[string][]byte, secrets map[string][]byte) []string {
	var found []string
	for _, name := range slices.Sorted(maps.Keys(files)) {
		content := files[name]
		if bytes.Contains(content, []byte("PRIVATE KEY")) {
			found = append(found, fmt.Sprintf("%s contains \"PRIVATE KEY\"", name))
		}
		for _, what := range slices.Sorted(maps.Keys(secrets)) {
			for enc, b := range encodings(secrets[what]) {
				if bytes.Contains(content, b) {
					found = append(found, fmt.Sprintf("%s contains %s (%s)", name, what, enc))
				}
			}
		}
	}
	return found
}

// TestEncodingsFindBase64InsideLongerText checks the base64 search on a
// secret embedded at each alignment inside a longer base64 text.
func TestEncodingsFindBase64InsideLongerText(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	for shift := range 3 {
		text := base64.StdEncoding.EncodeToString(append(append(bytes.Repeat([]byte{0xAA}, 5+shift), secret...), 1, 2, 3, 4))
		found := false
		for _, b := range encodings(secret) {
			if strings.Contains(text, string(b)) {
				found = true
			}
		}
		if !found {
			t.Errorf("secret at byte offset %d in a base64 text is not found", 5+shift)
		}
	}
}
