package config

import (
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
)

// XKS configures the AWS KMS External Key Store proxy front end: one or
// more stores, each a URI prefix with its own SigV4 credentials and the
// gateway keys it serves.
type XKS struct {
	Stores []XKSStore `yaml:"stores"`
}

// XKSStore is one external key store as AWS KMS sees it.
type XKSStore struct {
	// Name names the store in logs, metrics and the audit log.
	Name string `yaml:"name"`
	// URIPrefix is the path before /kms/xks/v1 (no leading or trailing
	// slash; may be empty).
	URIPrefix string `yaml:"uri_prefix"`
	// Region is the SigV4 region KMS signs with.
	Region string `yaml:"region"`
	// Credentials are one or two SigV4 credentials (two while rotating).
	Credentials []XKSCredential `yaml:"credentials"`
	// Keys are the gateway key name patterns the store serves (path.Match
	// syntax, as auth scopes).
	Keys []string `yaml:"keys"`
	// RatePerSecond is the store's request quota (0: none); beyond it,
	// ThrottlingException.
	RatePerSecond float64 `yaml:"rate_per_second"`
	// Policy is an optional secondary authorization on the request
	// metadata (health calls are exempt).
	Policy XKSPolicy `yaml:"policy"`
	// RequireClientName, with server.tls.client_ca_file, is the DNS name
	// (SAN or subject CN) the TLS client certificate must carry.
	RequireClientName string `yaml:"require_client_name"`
}

// XKSCredential is one SigV4 access key id and where its secret is.
type XKSCredential struct {
	AccessKeyID         string `yaml:"access_key_id"`
	SecretAccessKeyEnv  string `yaml:"secret_access_key_env"`
	SecretAccessKeyFile string `yaml:"secret_access_key_file"`
}

// XKSPolicy lists what a request's metadata may be; an empty list allows
// anything. Patterns use * (any run of characters, '/' included) and ?.
type XKSPolicy struct {
	Principals  []string `yaml:"principals"`   // awsPrincipalArn
	Operations  []string `yaml:"operations"`   // kmsOperation
	ViaServices []string `yaml:"via_services"` // kmsViaService
}

// XKSPath returns the XksProxyUriPath KMS is configured with.
func (s XKSStore) XKSPath() string {
	if s.URIPrefix == "" {
		return "/kms/xks/v1"
	}
	return "/" + s.URIPrefix + "/kms/xks/v1"
}

var (
	xksStoreName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	xksPrefix    = regexp.MustCompile(`^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$`)
	xksRegion    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	xksAccessKey = regexp.MustCompile(`^[A-Z2-7]{20,30}$`)
	xksSecret    = regexp.MustCompile(`^[A-Za-z0-9+/=]{43,64}$`)
	xksDNSName   = regexp.MustCompile(`^[A-Za-z0-9*]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$`)
)

// maxXKSPath is the longest XksProxyUriPath KMS takes.
const maxXKSPath = 128

func (x XKS) validate(tls TLS) error {
	names, paths, keyIDs := map[string]bool{}, map[string]string{}, map[string]string{}
	for i, s := range x.Stores {
		f := fmt.Sprintf("xks.stores[%d]", i)
		if !xksStoreName.MatchString(s.Name) {
			return &Error{f + ".name", fmt.Sprintf("%q: 1 to 63 characters of a-z 0-9 _ -, starting with a letter or digit", s.Name)}
		}
		if names[s.Name] {
			return &Error{f + ".name", fmt.Sprintf("%q is used twice", s.Name)}
		}
		names[s.Name] = true
		if s.URIPrefix != "" && !xksPrefix.MatchString(s.URIPrefix) {
			return &Error{f + ".uri_prefix", fmt.Sprintf("%q: segments of A-Z a-z 0-9 _ - separated by single slashes, no leading or trailing slash", s.URIPrefix)}
		}
		if p := s.XKSPath(); len(p) > maxXKSPath {
			return &Error{f + ".uri_prefix", fmt.Sprintf("the XksProxyUriPath %s is longer than KMS's %d characters", p, maxXKSPath)}
		} else if other, dup := paths[p]; dup {
			return &Error{f + ".uri_prefix", fmt.Sprintf("%q is store %s's prefix too", s.URIPrefix, other)}
		} else {
			paths[p] = s.Name
		}
		if !xksRegion.MatchString(s.Region) {
			return &Error{f + ".region", fmt.Sprintf("%q is not an AWS region name (like us-east-1)", s.Region)}
		}
		if n := len(s.Credentials); n < 1 || n > 2 {
			return &Error{f + ".credentials", fmt.Sprintf("has %d entries: give one, or two while rotating", n)}
		}
		for j, c := range s.Credentials {
			cf := fmt.Sprintf("%s.credentials[%d]", f, j)
			if !xksAccessKey.MatchString(c.AccessKeyID) {
				return &Error{cf + ".access_key_id", "must be 20 to 30 characters of A-Z and 2-7 (keygrid-hsm xks credentials new makes one)"}
			}
			if other, dup := keyIDs[c.AccessKeyID]; dup {
				return &Error{cf + ".access_key_id", "is also " + other + "'s: an access key id names one secret"}
			}
			keyIDs[c.AccessKeyID] = cf
			if (c.SecretAccessKeyEnv == "") == (c.SecretAccessKeyFile == "") {
				return &Error{cf, "give one of secret_access_key_env and secret_access_key_file"}
			}
		}
		if len(s.Keys) == 0 {
			return &Error{f + ".keys", "name the gateway keys this store serves (patterns like \"xks-*\")"}
		}
		for j, k := range s.Keys {
			if _, err := path.Match(k, ""); err != nil || k == "" {
				return &Error{fmt.Sprintf("%s.keys[%d]", f, j), fmt.Sprintf("%q is not a name pattern (use * and ?)", k)}
			}
		}
		if s.RatePerSecond < 0 {
			return &Error{f + ".rate_per_second", "must not be negative (0: no quota)"}
		}
		for field, list := range map[string][]string{"principals": s.Policy.Principals, "operations": s.Policy.Operations} {
			for j, p := range list {
				if p == "" {
					return &Error{fmt.Sprintf("%s.policy.%s[%d]", f, field, j), "must not be empty"}
				}
			}
		}
		if s.RequireClientName != "" {
			if tls.ClientCAFile == "" {
				return &Error{f + ".require_client_name", "needs server.tls.client_ca_file (client certificates are not asked for otherwise)"}
			}
			if !xksDNSName.MatchString(s.RequireClientName) {
				return &Error{f + ".require_client_name", fmt.Sprintf("%q is not a DNS name (like cks.kms.us-east-1.amazonaws.com)", s.RequireClientName)}
			}
		}
	}
	return nil
}

// SecretAccessKey reads the credential's secret from its environment
// variable (getenv, default os.Getenv) or file. field names the
// credential in errors, which never hold the secret.
func (c XKSCredential) SecretAccessKey(field string, getenv func(string) string) (string, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var secret, from string
	switch {
	case c.SecretAccessKeyEnv != "":
		secret, from = getenv(c.SecretAccessKeyEnv), field+".secret_access_key_env"
		if secret == "" {
			return "", &Error{from, "environment variable " + c.SecretAccessKeyEnv + " is unset or empty"}
		}
	case c.SecretAccessKeyFile != "":
		from = field + ".secret_access_key_file"
		b, err := os.ReadFile(c.SecretAccessKeyFile)
		if err != nil {
			return "", &Error{from, fmt.Sprintf("cannot read %s: %v", c.SecretAccessKeyFile, errors.Unwrap(err))}
		}
		secret = strings.TrimSpace(string(b))
	default:
		return "", &Error{field, "give one of secret_access_key_env and secret_access_key_file"}
	}
	if !xksSecret.MatchString(secret) {
		return "", &Error{from, "the secret access key must be 43 to 64 characters of A-Z a-z 0-9 + / = (keygrid-hsm xks credentials new makes one)"}
	}
	return secret, nil
}
