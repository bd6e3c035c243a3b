package server

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/httpstack"
)

// Reload applies what can change while the server runs from cfg, a freshly
// loaded configuration: the principals and their tokens, the rate limits,
// and the XKS stores with their credentials. Everything is built first; if
// any part is invalid (a bad file, a token file that cannot be read) the
// running configuration is kept whole and the error returned. Both
// outcomes are audited (operation config_reload, the principals added and
// removed; never a token). Settings a reload cannot change (listener,
// TLS, store, providers, audit) are left as they were started.
func (s *Server) Reload(ctx context.Context, cfg *config.Config, knownTypes []string) (err error) {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	detail := ""
	defer func() {
		if aerr := s.svc.RecordEvent(ctx, "config_reload", detail, err); aerr != nil && err == nil {
			err = aerr
		}
	}()
	if err := cfg.Validate(knownTypes); err != nil {
		detail = "refused: the new configuration is invalid; the running one is kept"
		return err
	}
	authn, err := newAuthenticator(cfg, s.log)
	if err != nil {
		detail = "refused: the new principals are invalid; the running configuration is kept"
		return err
	}
	var xfe FrontEnd
	if len(cfg.XKS.Stores) > 0 {
		if xfe, err = s.xksFrontEnd(cfg); err != nil {
			detail = "refused: the new XKS stores are invalid; the running configuration is kept"
			return err
		}
	}
	// Nothing can fail from here: swap.
	s.rest.SetAuthenticator(authn)
	if s.console != nil {
		s.console.SetAuthenticator(authn) // and signs everyone out
	}
	s.stack.SetLimits(httpstack.Limits{RatePerPrincipal: cfg.Limits.RatePerPrincipal, Burst: cfg.Limits.Burst,
		AuthFailureRate: cfg.Limits.AuthFailuresPerClient, AuthFailureBurst: cfg.Limits.AuthFailureBurst})
	xfe.Name = "xks"
	s.frontEnds.replace(xfe)
	detail = reloadDetail(s.cfg, cfg)
	s.cfg.Auth, s.cfg.Limits, s.cfg.XKS = cfg.Auth, cfg.Limits, cfg.XKS
	s.log.Info("configuration reloaded", "detail", detail)
	return nil
}

// reloadDetail says what a reload changed, by principal and store name.
func reloadDetail(old, cur *config.Config) string {
	names := func(c *config.Config) []string {
		var out []string
		for _, p := range c.Auth.Principals {
			out = append(out, p.Name)
		}
		return out
	}
	stores := func(c *config.Config) []string {
		var out []string
		for _, st := range c.XKS.Stores {
			out = append(out, st.Name)
		}
		return out
	}
	diff := func(a, b []string) (added, removed []string) {
		for _, x := range b {
			if !slices.Contains(a, x) {
				added = append(added, x)
			}
		}
		for _, x := range a {
			if !slices.Contains(b, x) {
				removed = append(removed, x)
			}
		}
		return
	}
	pa, pr := diff(names(old), names(cur))
	sa, sr := diff(stores(old), stores(cur))
	return fmt.Sprintf("principals %d (added [%s], removed [%s]); xks stores %d (added [%s], removed [%s]); limits and credentials re-read",
		len(cur.Auth.Principals), strings.Join(pa, " "), strings.Join(pr, " "), len(cur.XKS.Stores), strings.Join(sa, " "), strings.Join(sr, " "))
}
