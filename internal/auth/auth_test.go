package auth

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRoles(t *testing.T) {
	all := []Action{ActionCreate, ActionGet, ActionList, ActionPublicKey, ActionActivate, ActionDeactivate, ActionRotate,
		ActionDelete, ActionCancelDeletion, ActionUpdate, ActionSign, ActionVerify, ActionEncrypt, ActionDecrypt, ActionWrap, ActionUnwrap, ActionProviders,
		ActionRewrap, ActionRandom, ActionImport, ActionExport}
	allowed := map[Role][]Action{
		RoleAdmin: all,
		RoleOperator: {ActionGet, ActionList, ActionPublicKey, ActionProviders, ActionSign, ActionVerify, ActionEncrypt, ActionDecrypt, ActionWrap, ActionUnwrap,
			ActionRewrap, ActionRandom},
		RoleAuditor: {ActionGet, ActionList, ActionPublicKey, ActionProviders},
		"root":      nil,
	}
	for role, yes := range allowed {
		for _, a := range all {
			want := false
			for _, y := range yes {
				want = want || y == a
			}
			if got := Allowed(role, a); got != want {
				t.Errorf("Allowed(%s, %s) = %v, want %v", role, a, got, want)
			}
		}
	}
	var nobody *Principal
	if nobody.Can(ActionGet) || nobody.InScope("x", "software") || nobody.MayKnowName("x") {
		t.Error("a nil principal may do something")
	}
}

func TestScope(t *testing.T) {
	p := NewPrincipal("pay", RoleOperator, "", []string{"payments-*", "shared"}, []string{"hsm"})
	for _, tc := range []struct {
		name, provider string
		want           bool
	}{
		{"payments-signing", "hsm", true},
		{"payments-", "hsm", true},
		{"shared", "hsm", true},
		{"payments-signing", "software", false},
		{"billing", "hsm", false},
		{"xpayments-1", "hsm", false},
		{"shared2", "hsm", false},
	} {
		if got := p.InScope(tc.name, tc.provider); got != tc.want {
			t.Errorf("InScope(%s, %s) = %v", tc.name, tc.provider, got)
		}
	}
	if !p.MayKnowName("payments-x") || p.MayKnowName("billing") || !p.Scoped() {
		t.Error("MayKnowName or Scoped wrong")
	}
	if all := NewPrincipal("a", RoleAdmin, "", nil, nil); all.Scoped() || !all.InScope("anything", "any") {
		t.Error("an unscoped principal is scoped")
	}
}

func TestAuthenticate(t *testing.T) {
	dir := t.TempDir()
	fileTok := "file-token-0123456789abcdef"
	if err := os.WriteFile(filepath.Join(dir, "tok"), []byte(fileTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := New([]PrincipalSpec{
		{Name: "by-hash", Role: "admin", TokenSHA256: strings.ToUpper(HashToken("hash-token-0123456789"))},
		{Name: "by-file", Role: "operator", TokenFile: filepath.Join(dir, "tok"), ClientCertSubject: "CN=ci-signer,O=Example"},
		{Name: "by-env", Role: "auditor", TokenEnv: "KG_TEST_TOKEN"},
		{Name: "by-cert", Role: "operator", ClientCertSubject: "CN=cert-only"},
	}, Options{Getenv: func(k string) string {
		if k == "KG_TEST_TOKEN" {
			return "env-token-0123456789"
		}
		return ""
	}})
	if err != nil {
		t.Fatal(err)
	}
	chain := func(cn string) [][]*x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
		if cn == "ci-signer" {
			c.Subject.Organization = []string{"Example"}
		}
		return [][]*x509.Certificate{{c}}
	}
	for _, tc := range []struct {
		name   string
		token  string
		chains [][]*x509.Certificate
		want   string
		err    error
	}{
		{"token from hash", "hash-token-0123456789", nil, "by-hash", nil},
		{"token from file", fileTok, nil, "by-file", nil},
		{"token from env", "env-token-0123456789", nil, "by-env", nil},
		{"certificate alone", "", chain("cert-only"), "by-cert", nil},
		{"certificate and its token", fileTok, chain("ci-signer"), "by-file", nil},
		{"unmapped certificate with a token", "hash-token-0123456789", chain("stranger"), "by-hash", nil},
		{"no credential", "", nil, "", ErrNoCredential},
		{"wrong token", "hash-token-012345678", nil, "", ErrBadToken},
		{"unmapped certificate alone", "", chain("stranger"), "", ErrUnknownCertificate},
		{"token and certificate of two principals", "hash-token-0123456789", chain("cert-only"), "", ErrMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := a.Authenticate(tc.token, tc.chains)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || p != nil {
					t.Fatalf("got %v, %v; want %v", p, err, tc.err)
				}
				if tc.token != "" && strings.Contains(err.Error(), tc.token) {
					t.Fatal("the error holds the token")
				}
				return
			}
			if err != nil || p.Name != tc.want {
				t.Fatalf("got %v, %v; want %s", p, err, tc.want)
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	secret := "zq7Xk"
	for name, tc := range map[string]struct {
		ps    []PrincipalSpec
		field string
	}{
		"missing file":    {[]PrincipalSpec{{Name: "a", Role: "admin", TokenFile: "/nonexistent/tok"}}, "auth.principals[0].token_file"},
		"unset env":       {[]PrincipalSpec{{Name: "a", Role: "admin", TokenEnv: "KG_UNSET_FOR_TEST"}}, "auth.principals[0].token_env"},
		"short env token": {[]PrincipalSpec{{Name: "a", Role: "admin", TokenEnv: "KG_SHORT"}}, "auth.principals[0].token_env"},
		"same token twice": {[]PrincipalSpec{
			{Name: "a", Role: "admin", TokenSHA256: HashToken("same-token-0123456789")},
			{Name: "b", Role: "auditor", TokenEnv: "KG_SAME"},
		}, "auth.principals[1]"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(tc.ps, Options{Getenv: func(k string) string {
				switch k {
				case "KG_SHORT":
					return secret
				case "KG_SAME":
					return "same-token-0123456789"
				}
				return ""
			}})
			var ce *PrincipalError
			if !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("got %v, want field %s", err, tc.field)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "same-token") {
				t.Fatal("the error holds the token")
			}
		})
	}
}

func TestBootstrapAdmin(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "admin.token")
	p, created, err := BootstrapAdmin(path)
	if err != nil || !created || p.Role != RoleAdmin {
		t.Fatalf("first start: %v %v %v", p, created, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, %v", st.Mode(), err)
	}
	b, _ := os.ReadFile(path)
	tok := strings.TrimSpace(string(b))
	a := WithPrincipals(p)
	if got, err := a.Authenticate(tok, nil); err != nil || got.Name != "admin" {
		t.Fatalf("the file's token does not authenticate: %v", err)
	}
	p2, created, err := BootstrapAdmin(path)
	if err != nil || created {
		t.Fatalf("second start: %v %v", created, err)
	}
	if got, err := WithPrincipals(p2).Authenticate(tok, nil); err != nil || got != p2 {
		t.Fatal("the token changed at the second start")
	}
	if NewToken() == NewToken() || len(NewToken()) < 40 {
		t.Fatal("NewToken is not random or too short")
	}
}
