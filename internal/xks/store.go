package xks

import (
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/time/rate"

	"github.com/keygrid/keygrid-hsm/internal/auth"
	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/kgerr"
)

// store is a configured external key store, ready to serve.
type store struct {
	cfg config.XKSStore
	// bases are the path prefixes of its routes, up to and including
	// "/kms/xks/v1/". An empty uri_prefix has two: "/kms/xks/v1/" and
	// "//kms/xks/v1/" (the second is what a client joining an endpoint, a
	// slash and an empty prefix sends).
	bases []string
	// secrets maps access key id to secret access key.
	secrets map[string]string
	// principal is who the store's requests are to the key service: the
	// operator role, scoped to the store's key patterns.
	principal *auth.Principal
	limiter   *rate.Limiter // nil: no quota
}

// apiPath is what follows a store's prefix.
const apiPath = "/kms/xks/v1/"

// newStore readies the store at index i of the configuration.
func newStore(i int, c config.XKSStore, getenv func(string) string) (*store, error) {
	s := &store{cfg: c, secrets: map[string]string{},
		principal: auth.NewPrincipal("xks:"+c.Name, auth.RoleOperator, "", c.Keys, nil)}
	if c.URIPrefix == "" {
		s.bases = []string{apiPath, "/" + apiPath}
	} else {
		s.bases = []string{"/" + c.URIPrefix + apiPath}
	}
	for j, cr := range c.Credentials {
		secret, err := cr.SecretAccessKey(fmt.Sprintf("xks.stores[%d].credentials[%d]", i, j), getenv)
		if err != nil {
			return nil, err
		}
		s.secrets[cr.AccessKeyID] = secret
	}
	if c.RatePerSecond > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(c.RatePerSecond), max(1, int(c.RatePerSecond)))
	}
	return s, nil
}

// sortStores orders stores so that the longest base matches first.
func sortStores(ss []*store) {
	sort.SliceStable(ss, func(i, j int) bool { return len(ss[i].bases[0]) > len(ss[j].bases[0]) })
}

// keyName is what an externalKeyId may be (the specification's alphabet
// and length; gateway key names are a subset).
var keyName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// serves reports whether the store serves the gateway key named id.
func (s *store) serves(id string) bool { return Serves(s.cfg, id) }

// Serves reports whether a store serves the gateway key named name (when
// it is an AES key): a name its keys patterns match.
func Serves(c config.XKSStore, name string) bool {
	if !keyName.MatchString(name) {
		return false
	}
	for _, p := range c.Keys {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// allow takes one request from the store's quota.
func (s *store) allow() error {
	if s.limiter == nil || s.limiter.Allow() {
		return nil
	}
	return kgerr.New(kgerr.KindRateLimited, fmt.Sprintf("store %s is over its quota of %g requests per second", s.cfg.Name, s.cfg.RatePerSecond))
}

// authorize is the store's secondary authorization on the request
// metadata (health calls are exempt). The error says which rule denied.
func (s *store) authorize(m *requestMetadata) error {
	p := s.cfg.Policy
	check := func(list []string, v *string, field, rule string) error {
		if len(list) == 0 {
			return nil
		}
		val := deref(v)
		for _, pat := range list {
			if glob(pat, val) {
				return nil
			}
		}
		if v == nil {
			return kgerr.New(kgerr.KindPermissionDenied, fmt.Sprintf("the request has no %s and policy.%s of store %s names none", field, rule, s.cfg.Name))
		}
		return kgerr.New(kgerr.KindPermissionDenied, fmt.Sprintf("%s %q is not allowed by policy.%s of store %s", field, kgerr.Clip(val), rule, s.cfg.Name))
	}
	if err := check(p.Principals, m.AWSPrincipalArn, "awsPrincipalArn", "principals"); err != nil {
		return err
	}
	if err := check(p.Operations, m.KMSOperation, "kmsOperation", "operations"); err != nil {
		return err
	}
	return check(p.ViaServices, m.KMSViaService, "kmsViaService", "via_services")
}

// glob matches s against a pattern where * is any run of characters ('/'
// and ':' included: ARNs have both) and ? any one character.
func glob(pattern, s string) bool {
	star, mark := -1, 0
	i, j := 0, 0
	for j < len(s) {
		switch {
		case i < len(pattern) && (pattern[i] == '?' || pattern[i] == s[j]):
			i++
			j++
		case i < len(pattern) && pattern[i] == '*':
			star, mark = i, j
			i++
		case star >= 0:
			i, mark = star+1, mark+1
			j = mark
		default:
			return false
		}
	}
	return strings.Trim(pattern[i:], "*") == ""
}
