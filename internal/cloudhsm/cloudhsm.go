// Package cloudhsm watches an AWS CloudHSM cluster through its management
// API (cloudhsmv2 DescribeClusters, AWS SDK for Go v2) for the aws-cloudhsm
// provider: how many HSMs are ACTIVE, in which availability zones, and
// whether the API answers at all.
//
// The watch is beside the crypto path, never on it: a poller runs on its own
// goroutine every interval, each describe bounded by its own deadline, and
// keeps the last view for health and metrics. A management API that fails,
// throttles or refuses the credentials only shows in that view's error; the
// provider keeps serving from its PKCS#11 module.
//
// Credentials come from the SDK's default chain (environment, shared config
// and credentials files, web identity, container credentials), the EC2
// instance role only when UseInstanceRole is set. Neither they nor a request
// signature nor the text of the API's answers (AWS's InvalidSignature
// messages quote the canonical request, security token included) reach a
// log line or an error: errors are described in this package's own words,
// with the API's error code and request id.
package cloudhsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Defaults.
const (
	DefaultInterval = 60 * time.Second
	DefaultTimeout  = 10 * time.Second
	MinInterval     = time.Second
	MaxInterval     = 24 * time.Hour
)

// The management API's states (cloudhsmv2 HsmState, ClusterState).
const (
	StateActive = "ACTIVE"
)

// Options configure the watch of one cluster.
type Options struct {
	Region    string
	ClusterID string
	// Endpoint, when set, replaces the regional endpoint of the management
	// API (a VPC endpoint; the tests' stand-in).
	Endpoint string
	// UseInstanceRole lets the credential chain ask the EC2 instance
	// metadata service; off, it never does (no delay on hosts without one).
	UseInstanceRole bool
	// Interval between describes (default 60 s); Timeout bounds one,
	// retries included (default 10 s).
	Interval time.Duration
	Timeout  time.Duration
	Logger   *slog.Logger
}

var (
	// AWS's own ids are cluster- and 11 to 16 base32 characters; the
	// seed's example (cluster-123456789abcdef0) must load as written, so
	// the check is looser and the API has the last word.
	clusterIDPattern = regexp.MustCompile(`^cluster-[a-zA-Z0-9]{1,32}$`)
	regionPattern    = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
)

// Validate checks the options as the YAML of field (a provider's config
// block) gave them, naming the offending key: region, cluster_id,
// cloudhsm_endpoint, cluster_poll_interval.
func (o Options) Validate(field string) error {
	switch {
	case o.Region == "" && o.ClusterID == "":
		return fmt.Errorf("%s: region and cluster_id are required to watch a CloudHSM cluster", field)
	case o.Region == "":
		return fmt.Errorf("%s.region: required with cluster_id (the cluster's AWS region, like us-west-2)", field)
	case o.ClusterID == "":
		return fmt.Errorf("%s.cluster_id: required with region (the cluster's id, like cluster-jxhlf7644ne)", field)
	case !regionPattern.MatchString(o.Region):
		return fmt.Errorf("%s.region: %q is not an AWS region (like us-west-2)", field, o.Region)
	case !clusterIDPattern.MatchString(o.ClusterID):
		return fmt.Errorf("%s.cluster_id: %q is not a CloudHSM cluster id (like cluster-jxhlf7644ne)", field, o.ClusterID)
	case o.Interval != 0 && (o.Interval < MinInterval || o.Interval > MaxInterval):
		return fmt.Errorf("%s.cluster_poll_interval: must be between %s and %s", field, MinInterval, MaxInterval)
	}
	if o.Endpoint != "" {
		u, err := url.Parse(o.Endpoint)
		switch {
		case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
			return fmt.Errorf("%s.cloudhsm_endpoint: must be an http or https URL (like https://cloudhsmv2.us-west-2.amazonaws.com)", field)
		case u.User != nil:
			return fmt.Errorf("%s.cloudhsm_endpoint: must not carry a user or password", field)
		}
	}
	return nil
}

func (o Options) withDefaults() Options {
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// cluster is what one describe found.
type cluster struct {
	state, hsmType string
	hsms           []hsm
}

type hsm struct{ id, zone, state, ip string }

// active returns the ACTIVE HSMs and their distinct zones, sorted.
func (c cluster) active() (n int, zones []string) {
	for _, h := range c.hsms {
		if h.state != StateActive {
			continue
		}
		n++
		if !slices.Contains(zones, h.zone) {
			zones = append(zones, h.zone)
		}
	}
	slices.Sort(zones)
	return n, zones
}

// risks names what puts the cluster one failure from down, or down: fewer
// than two ACTIVE HSMs (CloudHSM also refuses to use a key that is not on
// two HSMs unless the key-availability check is disabled), all in one
// availability zone, a cluster that is not ACTIVE.
func (c cluster) risks() []string {
	var out []string
	if c.state != StateActive {
		out = append(out, fmt.Sprintf("the cluster is %s, not ACTIVE", orUnknown(c.state)))
	}
	n, zones := c.active()
	switch {
	case n == 0:
		out = append(out, "no HSM of the cluster is ACTIVE: key operations cannot be served")
	case n == 1:
		out = append(out, fmt.Sprintf("only one HSM is ACTIVE (in %s): one HSM failure stops every key operation, "+
			"and CloudHSM refuses keys that are not on two HSMs unless the key-availability check is disabled", zones[0]))
	case len(zones) == 1:
		out = append(out, fmt.Sprintf("all %d ACTIVE HSMs are in one availability zone (%s): an outage of that zone stops every key operation",
			n, zones[0]))
	}
	return out
}

// summary is a short description of the HSMs for events and logs.
func (c cluster) summary() string {
	n, zones := c.active()
	return fmt.Sprintf("%d HSM(s), %d ACTIVE in %d availability zone(s)%s", len(c.hsms), n, len(zones), zoneList(zones))
}

func zoneList(zones []string) string {
	if len(zones) == 0 {
		return ""
	}
	return " (" + strings.Join(zones, ", ") + ")"
}

func orUnknown(s string) string {
	if s == "" {
		return "in no reported state"
	}
	return s
}

// errClusterNotFound is the describe's answer when the API lists no cluster
// with the configured id in the region.
var errClusterNotFound = errors.New("cluster not found")

// isContextError reports a describe cut short by its own deadline or by
// the poller closing.
func isContextError(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
