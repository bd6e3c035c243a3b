package pkcs11

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/keygrid/keygrid-hsm/internal/cloudhsm"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// CloudHSM cluster awareness: an aws-cloudhsm instance with region and
// cluster_id watches its cluster through the management API
// (internal/cloudhsm), beside the PKCS#11 path and never on it. The view
// reaches health and metrics through provider.ClusterReporter, a change in
// the number of HSMs the audit log through the provider's events.

// clusterOptions validates the cluster settings of a config block; nil
// when none is set.
func (c Config) clusterOptions(typ, field string) (*cloudhsm.Options, error) {
	set := ""
	for _, f := range []struct {
		name string
		set  bool
	}{{"region", c.Region != ""}, {"cluster_id", c.ClusterID != ""}, {"use_instance_role", c.UseInstanceRole},
		{"cluster_poll_interval", c.ClusterPollInterval != 0}, {"cloudhsm_endpoint", c.CloudHSMEndpoint != ""}} {
		if f.set {
			set = f.name
			break
		}
	}
	if set == "" {
		return nil, nil
	}
	if typ != TypeAWSCloudHSM {
		return nil, fmt.Errorf("%s.%s: watching a CloudHSM cluster needs type %s", field, set, TypeAWSCloudHSM)
	}
	o := cloudhsm.Options{Region: c.Region, ClusterID: c.ClusterID, Endpoint: c.CloudHSMEndpoint,
		UseInstanceRole: c.UseInstanceRole, Interval: time.Duration(c.ClusterPollInterval)}
	if err := o.Validate(field); err != nil {
		return nil, err
	}
	return &o, nil
}

// startCluster starts watching the cluster, if the configuration names one.
func (p *Provider) startCluster() {
	if p.cfg.cluster == nil {
		return
	}
	o := *p.cfg.cluster
	o.Logger = p.log
	p.cluster = cloudhsm.NewPoller(o, p.emit)
	p.cluster.Start()
}

// ClusterStatus implements provider.ClusterReporter.
func (p *Provider) ClusterStatus() (provider.ClusterStatus, bool) {
	if p.cluster == nil {
		return provider.ClusterStatus{}, false
	}
	return p.cluster.Status(), true
}

// doctorCluster is Doctor's cluster check: reachable, authorized, HSM
// count, zone spread.
func doctorCluster(o cloudhsm.Options, out io.Writer) bool {
	return cloudhsm.Doctor(context.Background(), o, func(status, check, msg string) {
		fmt.Fprintf(out, "%s  %-12s %s\n", status, check, msg)
	})
}
