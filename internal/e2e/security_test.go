package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/audit"
	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/provider/registry"
	"github.com/keygrid/keygrid-hsm/internal/server"
	"github.com/keygrid/keygrid-hsm/internal/testbed"
)

// TestSecretsNeverLeak runs a workload with a known HSM PIN, known tokens
// and known plaintext, key material and AAD, including failures (wrong
// tokens, denials, bad input, a failed decryption, a wrong PIN at start),
// with the server log at debug level, and greps every log line, every audit
// line and every error body for them.
func TestSecretsNeverLeak(t *testing.T) {
	testbed.ProcessSoftHSM(t)
	const (
		adminToken    = "kgt_E2E-admin-token-7c1d9e44f0aa"
		operatorToken = "kgt_E2E-operator-token-5e2b8a61"
		wrongToken    = "kgt_E2E-admin-token-7c1d9e44f0ab" // one character off
		plaintext     = "PLAINTEXT-SECRET-4111-1111-1111-1111"
		aad           = "AAD-SECRET-order-31337"
		material      = "KEY-MATERIAL-SECRET-0123456789abcdef"
		wrongPIN      = "kg-cu:WRONG-pin-8642"
	)
	dir := t.TempDir()
	opTokFile := filepath.Join(dir, "operator.token")
	if err := os.WriteFile(opTokFile, []byte(operatorToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := hsmConfig(t) + fmt.Sprintf(`
auth:
  principals:
    - {name: admin, role: admin, token_sha256: %s}
    - {name: op, role: operator, token_file: %s, keys: ["leak-*"]}
limits:
  rate_per_principal: 1000
`, auth.HashToken(adminToken), opTokFile)
	var logs testbed.LogBuffer
	log := testbed.JSONLogger(&logs)

	start := func(yaml string) (*server.Server, error) {
		path := testbed.WriteConfig(t, yaml)
		os.Setenv("KEYGRID_E2E_MASTER_KEY", strings.Repeat("ab", 32))
		cfg, err := config.Load(path, config.Flags{DataDir: filepath.Join(dir, "data"), Listen: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		return server.New(context.Background(), cfg, registry.All(), log, "e2e")
	}

	// A wrong PIN: the server does not start, and says why without the PIN.
	os.Setenv("KEYGRID_E2E_WRONG_PIN", wrongPIN)
	_, err := start(strings.Replace(yaml, "pin_env: KEYGRID_E2E_PIN", "pin_env: KEYGRID_E2E_WRONG_PIN", 1))
	if err == nil {
		t.Fatal("the server started with a wrong PIN")
	}
	startErr := err.Error()

	srv, err := start(yaml)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	defer func() { ts.Close(); srv.Close() }()

	var errorBodies [][]byte
	var outputs [][]byte // signatures, ciphertexts, wrapped keys: not for logs or audit
	call := func(token, method, path string, body any, want int) map[string]any {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		if s, ok := body.(string); ok {
			rd = strings.NewReader(s)
		}
		req, _ := http.NewRequest(method, ts.URL+path, rd)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
		}
		if resp.StatusCode >= 400 {
			errorBodies = append(errorBodies, b)
		}
		var out map[string]any
		json.Unmarshal(b, &out)
		for _, f := range []string{"signature", "ciphertext", "wrapped_key"} {
			if s, ok := out[f].(string); ok {
				raw, _ := base64.StdEncoding.DecodeString(s)
				outputs = append(outputs, raw)
			}
		}
		return out
	}
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	for _, k := range []string{
		`{"name":"leak-ec","provider":"hsm","key_spec":{"key_type":"EC","curve":"P-256"}}`,
		`{"name":"leak-rsa","provider":"hsm","key_spec":{"key_type":"RSA","key_size":2048,"usage":["sign","verify","encrypt","decrypt"]}}`,
		`{"name":"leak-aes","provider":"hsm","key_spec":{"key_type":"AES","key_size":256}}`,
		`{"name":"leak-kek","provider":"software","key_spec":{"key_type":"AES","key_size":256,"usage":["wrap","unwrap"]}}`,
		`{"name":"other-ec","provider":"software","key_spec":{"key_type":"EC","curve":"P-256"}}`,
	} {
		call(adminToken, http.MethodPost, "/api/v1/keys", k, http.StatusCreated)
	}
	sig := call(operatorToken, http.MethodPost, "/api/v1/keys/leak-ec/sign", map[string]any{"data": b64(plaintext)}, http.StatusOK)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-ec/verify", map[string]any{"data": b64(plaintext), "signature": sig["signature"]}, http.StatusOK)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-rsa/sign", map[string]any{"data": b64(plaintext), "algorithm": "PS256"}, http.StatusOK)
	ct := call(operatorToken, http.MethodPost, "/api/v1/keys/leak-aes/encrypt", map[string]any{"plaintext": b64(plaintext), "aad": b64(aad)}, http.StatusOK)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-aes/decrypt", map[string]any{"ciphertext": ct["ciphertext"], "aad": b64(aad)}, http.StatusOK)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-aes/decrypt", map[string]any{"ciphertext": ct["ciphertext"], "aad": b64("other")}, http.StatusBadRequest)
	rct := call(operatorToken, http.MethodPost, "/api/v1/keys/leak-rsa/encrypt", map[string]any{"plaintext": b64(plaintext), "algorithm": "RSA-OAEP"}, http.StatusOK)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-rsa/decrypt", map[string]any{"ciphertext": rct["ciphertext"], "algorithm": "RSA-OAEP"}, http.StatusOK)
	w := call(operatorToken, http.MethodPost, "/api/v1/keys/leak-kek/wrap", map[string]any{"key_material": b64(material)}, http.StatusOK)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-kek/unwrap", map[string]any{"wrapped_key": w["wrapped_key"]}, http.StatusOK)
	// Failures.
	call(wrongToken, http.MethodPost, "/api/v1/keys/leak-ec/sign", map[string]any{"data": b64(plaintext)}, http.StatusUnauthorized)
	call("", http.MethodPost, "/api/v1/keys/leak-ec/sign", map[string]any{"data": b64(plaintext)}, http.StatusUnauthorized)
	call(operatorToken, http.MethodPost, "/api/v1/keys/other-ec/sign", map[string]any{"data": b64(plaintext)}, http.StatusForbidden)
	call(operatorToken, http.MethodPost, "/api/v1/keys", `{"name":"leak-x","key_spec":{"key_type":"EC"}}`, http.StatusForbidden)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-ec/sign", `{"data":"`+plaintext+`"}`, http.StatusBadRequest)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-ec/sign", `{"data":"`+b64(plaintext)+`","note":"x"}`, http.StatusBadRequest)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-ec/sign", `{"digest":"`+b64(plaintext)+`"}`, http.StatusBadRequest)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-kek/unwrap", map[string]any{"wrapped_key": b64(material + "1234")}, http.StatusBadRequest)
	call(operatorToken, http.MethodPost, "/api/v1/keys/leak-rsa/encrypt", map[string]any{"plaintext": b64(strings.Repeat(plaintext, 10)), "algorithm": "RSA-OAEP"}, http.StatusBadRequest)
	call(adminToken, http.MethodGet, "/api/v1/providers/hsm/health", nil, http.StatusOK)
	call(adminToken, http.MethodPost, "/api/v1/keys/leak-aes/rotate", nil, http.StatusOK)
	call(adminToken, http.MethodDelete, "/api/v1/keys/other-ec", nil, http.StatusOK)
	call(adminToken, http.MethodPost, "/api/v1/keys/other-ec/cancel-deletion", nil, http.StatusOK)
	call(adminToken, http.MethodPatch, "/api/v1/keys/other-ec", map[string]any{"metadata": map[string]string{"k": "v"}}, http.StatusOK)
	ts.Close()
	srv.Close()

	auditRaw, err := os.ReadFile(filepath.Join(dir, "data", "audit.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n, _, err := audit.Verify(bytes.NewReader(auditRaw), audit.ZeroHash); err != nil || n < 20 {
		t.Fatalf("audit log: %d lines, %v", n, err)
	}
	if !bytes.Contains(auditRaw, []byte(`"outcome":"denied"`)) || !bytes.Contains(auditRaw, []byte(`"principal":"op"`)) {
		t.Fatal("the audit log lacks the denials or the principal")
	}
	logRaw := logs.Bytes()
	if !bytes.Contains(logRaw, []byte(`"msg":"request"`)) {
		t.Fatal("no request was logged: the log capture is not working")
	}
	secrets := map[string][]byte{
		"HSM PIN": []byte(hsmPIN), "HSM PIN password": []byte(hsmPIN[strings.IndexByte(hsmPIN, ':')+1:]),
		"wrong PIN": []byte(wrongPIN), "wrong PIN password": []byte(wrongPIN[strings.IndexByte(wrongPIN, ':')+1:]),
		"admin token": []byte(adminToken), "operator token": []byte(operatorToken), "wrong token": []byte(wrongToken),
		"plaintext": []byte(plaintext), "aad": []byte(aad), "key material": []byte(material),
		"master key": []byte(strings.Repeat("ab", 32)),
	}
	for i, o := range outputs {
		secrets[fmt.Sprintf("output %d", i)] = o
	}
	places := map[string][]byte{"server log": logRaw, "audit log": auditRaw, "start error": []byte(startErr)}
	for i, b := range errorBodies {
		places[fmt.Sprintf("error body %d", i)] = b
	}
	for what, s := range secrets {
		forms := [][]byte{s, []byte(base64.StdEncoding.EncodeToString(s)), []byte(base64.RawStdEncoding.EncodeToString(s)),
			[]byte(base64.RawURLEncoding.EncodeToString(s)), []byte(fmt.Sprintf("%x", s))}
		for where, b := range places {
			for _, f := range forms {
				if len(f) >= 8 && bytes.Contains(b, f) {
					t.Errorf("%s holds the %s (%q)", where, what, f)
				}
			}
		}
	}
	if len(errorBodies) < 9 {
		t.Fatalf("only %d error bodies checked", len(errorBodies))
	}
}
