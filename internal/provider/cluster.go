package provider

import "time"

// ClusterReporter is implemented by providers that watch the cluster their
// HSM belongs to through the cloud's management API (aws-cloudhsm with
// region and cluster_id). ok is false when the instance watches none.
//
// What it reports never changes how the provider serves: a cluster at risk
// makes the provider degraded in health, never unavailable, and a
// management API that fails or refuses only shows in Error.
type ClusterReporter interface {
	ClusterStatus() (status ClusterStatus, ok bool)
}

// ClusterStatus is a provider's last view of its cluster.
type ClusterStatus struct {
	ID      string
	Region  string
	State   string // as the management API names it: ACTIVE, DEGRADED, UPDATE_IN_PROGRESS, …
	HSMType string
	HSMs    []ClusterHSM
	// HSMCounts counts the HSMs by state; every state the management API
	// defines is present, with 0 where none is in it. Nil until a describe
	// succeeded.
	HSMCounts map[string]int
	// Risks names, for people, why the cluster is at risk: fewer than two
	// ACTIVE HSMs, all of them in one availability zone, a cluster that is
	// not ACTIVE. Empty when it is not at risk (or was never described).
	Risks []string

	// CheckedAt is the time of the last describe, successful or not;
	// DescribedAt of the last successful one (zero: none yet). The fields
	// above are from DescribedAt.
	CheckedAt   time.Time
	DescribedAt time.Time
	// ErrorCode and Error describe the last describe's failure (empty when
	// it succeeded): the management API's error code (AccessDeniedException,
	// ThrottlingException, …) or one of unreachable, timeout,
	// no_credentials, cluster_not_found. Error is written for people and
	// carries no credential, signature or text of the management API's
	// answer. ErrorSince is when the current run of failures began.
	ErrorCode  string
	Error      string
	ErrorSince time.Time
	// Failures counts the failed describes since the provider opened.
	Failures uint64
}

// ClusterHSM is one HSM of a cluster.
type ClusterHSM struct {
	ID               string
	AvailabilityZone string
	State            string // CREATE_IN_PROGRESS, ACTIVE, DEGRADED, DELETE_IN_PROGRESS, DELETED
	ENIIP            string
}
