package service

// JOSE from managed keys: the JWKS of a key and of the published keys, and
// JWS/JWT signing. Signing goes through go-jose with an OpaqueSigner
// (joseSigner) whose SignPayload calls the service's own Sign, with ECDSA
// signatures in JOSE's raw r‖s form: go-jose builds the protected header
// and the compact serialization, the key never leaves its provider.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
	"github.com/keygrid/keygrid-hsm/internal/store"
)

// kidOf is the JOSE key id of a version.
func kidOf(id string, version int) string { return fmt.Sprintf("%s.%d", id, version) }

// jwkUse is the JWK "use" and "alg" of a key: its own algorithm, or the
// default signature algorithm of a key whose own is of no JOSE use.
func jwkUse(k *store.Key) (string, string) {
	a, err := alg.Lookup(k.Algorithm)
	switch {
	case err == nil && a.Kind == alg.KindSign:
		return "sig", string(a.Name)
	case err == nil && a.Kind == alg.KindEncrypt && a.KeyType == alg.RSA:
		return "enc", string(a.Name)
	}
	return "sig", string(alg.Default(specOf(k), []alg.Usage{alg.UsageSign}))
}

// jwks lists the active versions of an active key.
func (s *Service) jwks(k *store.Key) ([]JWK, error) {
	if k.State != store.StateActive {
		return nil, nil
	}
	use, a := jwkUse(k)
	var out []JWK
	for i := range k.Versions {
		v := &k.Versions[i]
		if v.State != store.StateActive {
			continue
		}
		pub, err := s.publicKey(v)
		if err != nil {
			return nil, err
		}
		j := JWK{KID: kidOf(k.ID, v.Version), KeyID: k.ID, KeyVersion: v.Version, Key: pub, Algorithm: a, Use: use}
		certs, err := parseChainPEM(v.CertificateChain)
		if err != nil {
			return nil, err
		}
		for _, c := range certs {
			j.Chain = append(j.Chain, c.Raw)
		}
		out = append(out, j)
	}
	return out, nil
}

// KeyJWKS returns the JWKS of a key: every active version.
func (s *Service) KeyJWKS(ctx context.Context, ref string) ([]JWK, error) {
	k, err := s.getKey(ctx, ref, opJWKS.action)
	if err != nil {
		s.auditDenied(ctx, opJWKS, k, err)
		return nil, err
	}
	if alg.Secret(alg.KeyType(k.KeyType)) {
		return nil, kgerr.Invalid(fmt.Sprintf("key %q is a secret key: it has no JWKS", k.Name))
	}
	if k.State != store.StateActive {
		return nil, kgerr.New(kgerr.KindKeyInactive, fmt.Sprintf("key %q is %s", k.Name, k.State))
	}
	return s.jwks(k)
}

// PublishedJWKS returns the JWKS of every key marked PublishJWKS (active
// keys, active versions), in key id order. It needs no principal: it is
// what /.well-known/jwks.json serves.
func (s *Service) PublishedJWKS(ctx context.Context) ([]JWK, error) {
	out := []JWK{}
	token := ""
	for {
		keys, next, err := s.store.ListKeys(ctx, store.ListOptions{PublishedJWKS: true, State: store.StateActive,
			Limit: store.MaxPageSize, PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			j, err := s.jwks(k)
			if err != nil {
				return nil, err
			}
			out = append(out, j...)
		}
		if next == "" {
			return out, nil
		}
		token = next
	}
}

// joseSigner is a go-jose OpaqueSigner over a keySigner.
type joseSigner struct {
	ks  *keySigner
	jwk *jose.JSONWebKey
}

func (j *joseSigner) Public() *jose.JSONWebKey { return j.jwk }

func (j *joseSigner) Algs() []jose.SignatureAlgorithm {
	return []jose.SignatureAlgorithm{jose.SignatureAlgorithm(j.ks.a.Name)}
}

// SignPayload signs the JWS signing input (header.payload): a message,
// hashed by the service for every algorithm but EdDSA.
func (j *joseSigner) SignPayload(payload []byte, a jose.SignatureAlgorithm) ([]byte, error) {
	if string(a) != string(j.ks.a.Name) {
		return nil, kgerr.New(kgerr.KindInternal, fmt.Sprintf("asked to sign %s with a %s signer", a, j.ks.a.Name))
	}
	return j.ks.sign(SignRequest{Key: j.ks.keyID, Algorithm: string(j.ks.a.Name), Data: payload, Format: SignatureRaw})
}

// reservedHeaders are set by the gateway, or would change how a verifier
// reads the token.
var reservedHeaders = []string{"alg", "kid", "crit", "b64", "jwk", "x5c", "x5u", "jku", "enc", "zip"}

// joseFor prepares a go-jose signer for operation o.
func (s *Service) joseFor(ctx context.Context, o *op, ref, algorithm string, header map[string]any, typ string) (jose.Signer, *keySigner, error) {
	k, _, ks, err := s.signerFor(ctx, o, ref, algorithm, SignatureRaw)
	if err != nil {
		return nil, nil, err
	}
	opts := &jose.SignerOptions{}
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	for name, v := range header {
		if slices.Contains(reservedHeaders, name) {
			return nil, nil, kgerr.Invalid(fmt.Sprintf("header %q is set by the gateway or not supported", kgerr.Clip(name)))
		}
		if name != "typ" {
			opts = opts.WithHeader(jose.HeaderKey(name), v)
		}
	}
	js := &joseSigner{ks: ks, jwk: &jose.JSONWebKey{Key: ks.pub, KeyID: kidOf(k.ID, ks.version), Algorithm: string(ks.a.Name), Use: "sig"}}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(ks.a.Name), Key: js}, opts)
	if err != nil {
		return nil, nil, kgerr.Wrap(kgerr.KindUnsupportedAlgorithm, err, fmt.Sprintf("%s cannot sign a JWS", ks.a.Name))
	}
	return signer, ks, nil
}

// maxHeaderBytes caps the caller's header parameters.
const maxHeaderBytes = 8 * 1024

func checkHeader(h map[string]any) error {
	b, err := json.Marshal(h)
	if err != nil {
		return kgerr.Invalid("header must be a JSON object")
	}
	if len(b) > maxHeaderBytes {
		return kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("header is larger than %d bytes", maxHeaderBytes))
	}
	return nil
}

// headerType is the "typ" of a header, or def.
func headerType(h map[string]any, def string) (string, error) {
	t, ok := h["typ"]
	if !ok {
		return def, nil
	}
	typ, ok := t.(string)
	if !ok {
		return "", kgerr.Invalid(`header "typ" must be a string`)
	}
	return typ, nil
}

// claims adds iat and exp to the caller's claims as asked.
func (s *Service) claims(req JWTRequest) (map[string]any, error) {
	if req.ExpiresIn < 0 {
		return nil, kgerr.Invalid("expires_in must be positive")
	}
	out := make(map[string]any, len(req.Claims)+2)
	for k, v := range req.Claims {
		out[k] = v
	}
	now := s.now().Unix()
	if req.ExpiresIn > 0 {
		for _, c := range []string{"exp", "iat"} {
			if _, ok := out[c]; ok {
				return nil, kgerr.Invalid(fmt.Sprintf("claim %q is set by expires_in: send one or the other", kgerr.Clip(c)))
			}
		}
		out["iat"], out["exp"] = now, now+int64(req.ExpiresIn/time.Second)
	}
	if req.IssuedAt {
		if _, ok := out["iat"]; !ok {
			out["iat"] = now
		} else if req.ExpiresIn == 0 {
			return nil, kgerr.Invalid(`claim "iat" is set by issued_at: send one or the other`)
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, kgerr.Invalid("claims must be a JSON object")
	}
	if len(b) > MaxDataBytes/2 {
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("claims are larger than %d bytes", MaxDataBytes/2))
	}
	return out, nil
}

// SignJWT signs a JWT with the current version of a key.
func (s *Service) SignJWT(ctx context.Context, req JWTRequest) (out *TokenResult, err error) {
	o := s.begin(opSignJWT)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	if err := checkHeader(req.Header); err != nil {
		return nil, err
	}
	typ, err := headerType(req.Header, "JWT")
	if err != nil {
		return nil, err
	}
	signer, ks, err := s.joseFor(ctx, o, req.Key, req.Algorithm, req.Header, typ)
	if err != nil {
		return nil, err
	}
	claims, err := s.claims(req)
	if err != nil {
		return nil, err
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return nil, signingFailed("JWT", err)
	}
	return &TokenResult{Token: tok, KID: kidOf(ks.keyID, ks.version), Algorithm: string(ks.a.Name), KeyID: ks.keyID, KeyVersion: ks.version}, nil
}

// SignJWS signs an arbitrary payload as a compact JWS.
func (s *Service) SignJWS(ctx context.Context, req JWSRequest) (out *TokenResult, err error) {
	o := s.begin(opSignJWS)
	defer withhold(&out, &err)
	defer s.finish(ctx, o, &err)
	if err := checkHeader(req.Header); err != nil {
		return nil, err
	}
	if req.Payload == nil {
		return nil, kgerr.Invalid("payload is required")
	}
	if len(req.Payload) > MaxDataBytes/2 {
		return nil, kgerr.New(kgerr.KindTooLarge, fmt.Sprintf("payload is larger than %d bytes", MaxDataBytes/2))
	}
	typ, err := headerType(req.Header, "")
	if err != nil {
		return nil, err
	}
	signer, ks, err := s.joseFor(ctx, o, req.Key, req.Algorithm, req.Header, typ)
	if err != nil {
		return nil, err
	}
	obj, err := signer.Sign(req.Payload)
	if err != nil {
		return nil, signingFailed("JWS", err)
	}
	var tok string
	if req.Detached {
		tok, err = obj.DetachedCompactSerialize()
	} else {
		tok, err = obj.CompactSerialize()
	}
	if err != nil {
		return nil, signingFailed("JWS", err)
	}
	return &TokenResult{Token: tok, KID: kidOf(ks.keyID, ks.version), Algorithm: string(ks.a.Name), KeyID: ks.keyID, KeyVersion: ks.version}, nil
}
