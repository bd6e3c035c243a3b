package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
)

// newAuthenticator builds the authenticator from the configured principals,
// or, when there are none, from the bootstrap admin token in
// auth.admin_token_file (made at first start, mode 0600). The log says
// where the token is, never what it is.
func newAuthenticator(cfg *config.Config, log *slog.Logger) (*auth.Authenticator, error) {
	if len(cfg.Auth.Principals) > 0 {
		a, err := auth.New(principalSpecs(cfg.Auth.Principals), auth.Options{})
		var pe *auth.PrincipalError
		if errors.As(err, &pe) {
			return nil, &config.Error{Field: pe.Field, Msg: pe.Msg}
		}
		if err != nil {
			return nil, err
		}
		for _, p := range a.Principals() {
			log.Debug("principal", "name", p.Name, "role", p.Role, "keys", p.KeyPatterns, "providers", p.Providers)
		}
		return a, nil
	}
	p, created, err := auth.BootstrapAdmin(cfg.Auth.AdminTokenFile)
	if err != nil {
		return nil, err
	}
	if created {
		log.Warn("no auth.principals configured: generated an admin token in the file at path; the CLI takes it with --token-file",
			"path", cfg.Auth.AdminTokenFile, "cli", "--token-file "+cfg.Auth.AdminTokenFile)
	} else {
		log.Info("no auth.principals configured: the admin token is in its file", "path", cfg.Auth.AdminTokenFile)
	}
	return auth.WithPrincipals(p), nil
}

// principalSpecs turns the configured principals into auth's input.
func principalSpecs(ps []config.Principal) []auth.PrincipalSpec {
	out := make([]auth.PrincipalSpec, len(ps))
	for i, p := range ps {
		out[i] = auth.PrincipalSpec{Name: p.Name, Role: p.Role, TokenSHA256: p.TokenSHA256, TokenFile: p.TokenFile, TokenEnv: p.TokenEnv,
			ClientCertSubject: p.ClientCertSubject, Keys: p.Keys, Providers: p.Providers, RatePerSecond: p.RatePerSecond, Burst: p.Burst}
	}
	return out
}

// TLSConfig returns the listener's TLS configuration (nil when TLS is off):
// TLS 1.2 or newer, and, with client_ca_file, a client certificate signed
// by one of those CAs required at the handshake.
func TLSConfig(c config.TLS) (*tls.Config, error) {
	if !c.Enabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return nil, &config.Error{Field: "server.tls.cert_file", Msg: fmt.Sprintf("cannot load the certificate and key: %v", err)}
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.MinVersion == "1.3" {
		tc.MinVersion = tls.VersionTLS13
	}
	if c.ClientCAFile != "" {
		pem, err := os.ReadFile(c.ClientCAFile)
		if err != nil {
			return nil, &config.Error{Field: "server.tls.client_ca_file", Msg: err.Error()}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &config.Error{Field: "server.tls.client_ca_file", Msg: "holds no PEM certificate"}
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// secureListener wraps ln in TLS when configured, and warns when plain HTTP
// is served beyond loopback (validation refuses that unless
// server.allow_insecure_http is set).
func (s *Server) secureListener(ln net.Listener) net.Listener {
	if s.tls != nil {
		return tls.NewListener(ln, s.tls)
	}
	if !config.IsLoopback(s.cfg.Server.Listen) {
		s.log.Warn("serving plain HTTP on a non-loopback address (server.allow_insecure_http): tokens and key operations cross the network unencrypted",
			"listen", s.cfg.Server.Listen)
	}
	return ln
}

// TLS returns the listener's TLS configuration (nil: plain HTTP).
func (s *Server) TLS() *tls.Config { return s.tls }

// RotateAudit rotates the audit log now (SIGHUP); the new file continues
// the chain. It returns the old file's new name.
func (s *Server) RotateAudit() (string, error) { return s.audit.Rotate() }
