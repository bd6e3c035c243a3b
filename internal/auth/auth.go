// Package auth authenticates callers and says what they may do.
//
// A Principal is a configured caller: a name, a role (admin, operator,
// auditor) and a key scope (name patterns and providers). Tokens are kept
// only as SHA-256 hashes and compared in constant time against every
// principal's hash; a verified TLS client certificate maps to a principal by
// its subject.
//
// The API authenticates (Authenticator.Authenticate); the key service, which
// knows key names and providers, authorizes (Principal.Can and
// Principal.InScope).
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/fsutil"
)

// Role is what a principal may do, whatever the key.
type Role string

// Roles.
const (
	// RoleAdmin may do everything.
	RoleAdmin Role = "admin"
	// RoleOperator may use keys (sign, verify, encrypt, decrypt, wrap,
	// unwrap) and read their metadata; it may not create, change or
	// delete keys.
	RoleOperator Role = "operator"
	// RoleAuditor may read metadata, public keys and provider health; no
	// cryptographic operation.
	RoleAuditor Role = "auditor"
)

// Action is one thing done through the API; the names are the operation
// names of the audit log.
type Action string

// Actions.
const (
	ActionCreate     Action = "create"
	ActionGet        Action = "get"
	ActionList       Action = "list"
	ActionPublicKey  Action = "public_key"
	ActionActivate   Action = "activate"
	ActionDeactivate Action = "deactivate"
	ActionRotate     Action = "rotate"
	ActionDelete     Action = "delete"
	// ActionCancelDeletion takes a key out of pending deletion.
	ActionCancelDeletion Action = "cancel_deletion"
	// ActionUpdate changes a key's metadata, description, expiry, rotation
	// period, min_decrypt_version or publish_jwks.
	ActionUpdate    Action = "update"
	ActionSign      Action = "sign"
	ActionVerify    Action = "verify"
	ActionEncrypt   Action = "encrypt"
	ActionDecrypt   Action = "decrypt"
	ActionWrap      Action = "wrap"
	ActionUnwrap    Action = "unwrap"
	ActionProviders Action = "providers"
	// ActionRewrap decrypts and encrypts again under the newest version;
	// ActionRandom returns random bytes from a provider.
	ActionRewrap Action = "rewrap"
	ActionRandom Action = "random"
	// ActionImport (the wrapping key and imports) and ActionExport
	// (wrapped export of extractable keys) are admin's only by default.
	ActionImport Action = "import"
	ActionExport Action = "export"
	// Certificates and tokens (every one of them also signs, and so also
	// needs ActionSign, except attaching and reading chains and JWKS).
	ActionCSR               Action = "csr"
	ActionIssueCertificate  Action = "issue_certificate"
	ActionAttachCertificate Action = "attach_certificate"
	ActionGetCertificate    Action = "get_certificate"
	ActionJWKS              Action = "jwks"
	ActionSignJWT           Action = "sign_jwt"
	ActionSignJWS           Action = "sign_jws"
	// ActionAuditCheckpoints reads the signed audit checkpoints and the
	// audit public key: admin's and auditor's, not operator's.
	ActionAuditCheckpoints Action = "audit_checkpoints"
	// ActionAuditRead reads audit records (the console's audit page and a
	// key page's recent records): admin's and auditor's, not operator's,
	// as no API route gives an operator the audit log.
	ActionAuditRead Action = "audit_read"
)

var (
	readActions   = []Action{ActionGet, ActionList, ActionPublicKey, ActionProviders, ActionGetCertificate, ActionJWKS}
	cryptoActions = []Action{ActionSign, ActionVerify, ActionEncrypt, ActionDecrypt, ActionWrap, ActionUnwrap,
		ActionCSR, ActionIssueCertificate, ActionSignJWT, ActionSignJWS, ActionRewrap, ActionRandom}
)

// Allowed returns whether role may do action at all (scope aside).
func Allowed(role Role, a Action) bool {
	switch role {
	case RoleAdmin:
		return true
	case RoleOperator:
		return slices.Contains(readActions, a) || slices.Contains(cryptoActions, a)
	case RoleAuditor:
		return slices.Contains(readActions, a) || a == ActionAuditCheckpoints || a == ActionAuditRead
	}
	return false
}

// Principal is an authenticated caller.
type Principal struct {
	Name string
	Role Role
	// KeyPatterns are key name patterns in scope (path.Match syntax);
	// empty: all names.
	KeyPatterns []string
	// Providers in scope; empty: all.
	Providers []string
	// RatePerSecond and Burst are this principal's rate limit (0: the
	// server's default).
	RatePerSecond float64
	Burst         int

	tokenHash   []byte // nil: no token
	certSubject string // "": no certificate mapping
}

// Can reports whether the principal's role allows action.
func (p *Principal) Can(a Action) bool { return p != nil && Allowed(p.Role, a) }

// Scoped reports whether the principal sees only some keys.
func (p *Principal) Scoped() bool { return len(p.KeyPatterns) > 0 || len(p.Providers) > 0 }

// ProviderScoped reports whether the principal sees only the keys of some
// providers.
func (p *Principal) ProviderScoped() bool { return p != nil && len(p.Providers) > 0 }

// InScope reports whether a key (by name and provider) is in the
// principal's scope.
func (p *Principal) InScope(name, provider string) bool {
	if p == nil {
		return false
	}
	return p.nameInScope(name) && (len(p.Providers) == 0 || slices.Contains(p.Providers, provider))
}

// MayKnowName reports whether a key named name could be in scope (on some
// provider). The service answers "not found" only to a principal that
// could see the key if it existed, and "not allowed" otherwise, so that a
// scoped principal cannot probe for names outside its scope.
func (p *Principal) MayKnowName(name string) bool { return p != nil && p.nameInScope(name) }

func (p *Principal) nameInScope(name string) bool {
	if len(p.KeyPatterns) == 0 {
		return true
	}
	for _, pat := range p.KeyPatterns {
		if ok, err := path.Match(pat, name); err == nil && ok {
			return true
		}
	}
	return false
}

// Errors of Authenticate, for errors.Is. Their text never holds a token.
var (
	// ErrNoCredential: the request carries no token and no mapped
	// certificate.
	ErrNoCredential = errors.New("no credential")
	// ErrBadToken: the token is no principal's.
	ErrBadToken = errors.New("unknown token")
	// ErrUnknownCertificate: a verified client certificate whose subject
	// no principal has, and no token.
	ErrUnknownCertificate = errors.New("client certificate subject is no principal's")
	// ErrMismatch: the token and the certificate name different principals.
	ErrMismatch = errors.New("token and client certificate belong to different principals")
)

// Authenticator finds the principal of a credential.
type Authenticator struct {
	principals []*Principal
}

// HashToken returns the hex SHA-256 of a token, as token_sha256 wants it.
func HashToken(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Options say where secrets come from.
type Options struct {
	// Getenv reads token_env variables (default os.Getenv).
	Getenv func(string) string
}

// PrincipalSpec is one configured principal (an entry of auth.principals):
// who it is, how it proves it, and what it may reach.
type PrincipalSpec struct {
	Name string
	// Role is admin, operator or auditor.
	Role string
	// At most one of TokenSHA256 (hex SHA-256 of the token), TokenFile (a
	// file holding the token) and TokenEnv (an environment variable
	// holding it).
	TokenSHA256 string
	TokenFile   string
	TokenEnv    string
	// ClientCertSubject maps a verified TLS client certificate with this
	// subject (RFC 2253 form) to the principal.
	ClientCertSubject string
	// Keys are key name patterns in scope; none: all keys.
	Keys []string
	// Providers are the providers in scope; none: all providers.
	Providers []string
	// RatePerSecond and Burst override the global rate limit (0: not).
	RatePerSecond float64
	Burst         int
}

// PrincipalError is a principal entry that cannot be used. Field is the
// configuration field it comes from ("auth.principals[2].token_env"), and
// the message reads as the configuration's own errors do. It never holds a
// token.
type PrincipalError struct {
	Field string
	Msg   string
}

func (e *PrincipalError) Error() string { return "config: " + e.Field + ": " + e.Msg }

// New builds an Authenticator from configured principals (ps[i] is
// auth.principals[i]), reading token_file and token_env. Errors are
// *PrincipalError and never hold a token.
func New(ps []PrincipalSpec, o Options) (*Authenticator, error) {
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	a := &Authenticator{}
	seen := map[string]string{}
	for i, cp := range ps {
		f := fmt.Sprintf("auth.principals[%d]", i)
		p := &Principal{Name: cp.Name, Role: Role(cp.Role), KeyPatterns: cp.Keys, Providers: cp.Providers,
			RatePerSecond: cp.RatePerSecond, Burst: cp.Burst, certSubject: cp.ClientCertSubject}
		var hexHash string
		switch {
		case cp.TokenSHA256 != "":
			hexHash = strings.ToLower(cp.TokenSHA256)
		case cp.TokenFile != "":
			b, err := os.ReadFile(cp.TokenFile)
			if err != nil {
				return nil, &PrincipalError{Field: f + ".token_file", Msg: fmt.Sprintf("cannot read %s: %v", cp.TokenFile, errors.Unwrap(err))}
			}
			tok := strings.TrimSpace(string(b))
			if len(tok) < 16 {
				return nil, &PrincipalError{Field: f + ".token_file", Msg: "the token in " + cp.TokenFile + " is shorter than 16 characters"}
			}
			hexHash = HashToken(tok)
		case cp.TokenEnv != "":
			tok := strings.TrimSpace(o.Getenv(cp.TokenEnv))
			if len(tok) < 16 {
				return nil, &PrincipalError{Field: f + ".token_env", Msg: "environment variable " + cp.TokenEnv + " is unset or shorter than 16 characters"}
			}
			hexHash = HashToken(tok)
		}
		if hexHash != "" {
			h, err := hex.DecodeString(hexHash)
			if err != nil || len(h) != sha256.Size {
				return nil, &PrincipalError{Field: f + ".token_sha256", Msg: "must be 64 hex digits"}
			}
			if other, dup := seen[hexHash]; dup {
				return nil, &PrincipalError{Field: f, Msg: "has the same token as principal " + other}
			}
			seen[hexHash] = cp.Name
			p.tokenHash = h
		}
		a.principals = append(a.principals, p)
	}
	return a, nil
}

// Principals returns the configured principals.
func (a *Authenticator) Principals() []*Principal { return a.principals }

// Authenticate returns the principal of a request's token (bearer token or
// API key; "" for none) and verified client certificate chains (the leaf
// of the first chain counts; nil for none).
//
// The token's hash is compared with every principal's in constant time, so
// that the time taken does not tell which principal, if any, came close.
func (a *Authenticator) Authenticate(token string, verifiedChains [][]*x509.Certificate) (*Principal, error) {
	var byCert *Principal
	var subject string
	if len(verifiedChains) > 0 && len(verifiedChains[0]) > 0 {
		subject = verifiedChains[0][0].Subject.String()
		for _, p := range a.principals {
			if p.certSubject != "" && p.certSubject == subject {
				byCert = p
			}
		}
	}
	if token == "" {
		switch {
		case byCert != nil:
			return byCert, nil
		case subject != "":
			return nil, ErrUnknownCertificate
		}
		return nil, ErrNoCredential
	}
	h := sha256.Sum256([]byte(token))
	var byToken *Principal
	for _, p := range a.principals {
		if p.tokenHash != nil && subtle.ConstantTimeCompare(p.tokenHash, h[:]) == 1 {
			byToken = p
		}
	}
	switch {
	case byToken == nil:
		return nil, ErrBadToken
	case byCert != nil && byCert != byToken:
		return nil, ErrMismatch
	}
	return byToken, nil
}

// NewToken returns a new random token: 32 bytes, URL-safe base64 with a
// "kgt_" prefix.
func NewToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return "kgt_" + base64.RawURLEncoding.EncodeToString(b)
}

// BootstrapAdmin returns the admin principal of a server that has no
// configured principals: its token is read from path, or made and written
// there (mode 0600) when the file does not exist; created says which. The
// token itself is never returned.
func BootstrapAdmin(path string) (p *Principal, created bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, false, fmt.Errorf("admin token: %w", err)
		}
		tok := NewToken()
		// Complete on disk or absent, never a torn token; another process
		// that made one first wins (fs.ErrExist).
		if err := fsutil.CreateFile(path, []byte(tok+"\n"), 0o600); err != nil {
			return nil, false, fmt.Errorf("admin token: %w", err)
		}
		b, created = []byte(tok), true
	case err != nil:
		return nil, false, fmt.Errorf("admin token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return nil, false, fmt.Errorf("admin token: %s holds no token (shorter than 16 characters); remove it to make a new one", path)
	}
	h := sha256.Sum256([]byte(tok))
	return &Principal{Name: "admin", Role: RoleAdmin, tokenHash: h[:]}, created, nil
}

// WithPrincipals returns an Authenticator for principals made here (the
// bootstrap admin, tests).
func WithPrincipals(ps ...*Principal) *Authenticator {
	return &Authenticator{principals: ps}
}

// NewPrincipal makes a principal with a token (tests, tools).
func NewPrincipal(name string, role Role, token string, keyPatterns, providers []string) *Principal {
	p := &Principal{Name: name, Role: role, KeyPatterns: keyPatterns, Providers: providers}
	if token != "" {
		h := sha256.Sum256([]byte(token))
		p.tokenHash = h[:]
	}
	return p
}
