package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
)

// CheckpointOptions filter and page the audit checkpoints.
type CheckpointOptions struct {
	Replica   string
	Limit     int
	PageToken string
}

// AuditCheckpoints lists one page of the signed audit checkpoints, newest
// first, with the audit public keys (admin and auditor principals).
func (c *Client) AuditCheckpoints(ctx context.Context, o CheckpointOptions) (*apitypes.CheckpointList, error) {
	q := url.Values{}
	if o.Replica != "" {
		q.Set("replica", o.Replica)
	}
	if o.PageToken != "" {
		q.Set("page_token", o.PageToken)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	path := "/api/v1/audit/checkpoints"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out apitypes.CheckpointList
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// AllAuditCheckpoints follows the pages of AuditCheckpoints to the end.
func (c *Client) AllAuditCheckpoints(ctx context.Context, replica string) (*apitypes.CheckpointList, error) {
	all := &apitypes.CheckpointList{}
	o := CheckpointOptions{Replica: replica, Limit: 1000}
	for {
		page, err := c.AuditCheckpoints(ctx, o)
		if err != nil {
			return nil, err
		}
		all.Checkpoints = append(all.Checkpoints, page.Checkpoints...)
		all.SigningKeys = page.SigningKeys
		if page.NextPageToken == "" {
			return all, nil
		}
		o.PageToken = page.NextPageToken
	}
}
