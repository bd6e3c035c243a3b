package cloudhsm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/cloudhsmv2"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// newClient builds the management API client: the SDK's default
// configuration and credential chain for the region, the instance metadata
// service only when asked, the endpoint override, few and short retries
// (one retry after at most a second: the next poll is the real retry).
func newClient(ctx context.Context, o Options) (*cloudhsmv2.Client, error) {
	imdsState := imds.ClientDisabled
	if o.UseInstanceRole {
		imdsState = imds.ClientEnabled
	}
	cfg, err := config.LoadDefaultConfig(ctx,
		config.WithRegion(o.Region),
		config.WithEC2IMDSClientEnableState(imdsState),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(so *retry.StandardOptions) {
				so.MaxAttempts = 2
				so.MaxBackoff = time.Second
			})
		}),
	)
	if err != nil {
		return nil, err
	}
	if cfg.Credentials != nil {
		cfg.Credentials = credentialsChain{cfg.Credentials}
	}
	return cloudhsmv2.NewFromConfig(cfg, func(co *cloudhsmv2.Options) {
		if o.Endpoint != "" {
			co.BaseEndpoint = aws.String(o.Endpoint)
		}
	}), nil
}

// credentialsChain marks the failures of the credential chain, which the
// SDK returns as text only.
type credentialsChain struct{ aws.CredentialsProvider }

func (c credentialsChain) Retrieve(ctx context.Context) (aws.Credentials, error) {
	v, err := c.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return v, &credentialsError{err}
	}
	return v, nil
}

// credentialsError is a failure to find credentials.
type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return "retrieving AWS credentials: " + e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// describe asks for the one cluster of the configuration.
func describe(ctx context.Context, c *cloudhsmv2.Client, id string) (cluster, error) {
	out, err := c.DescribeClusters(ctx, &cloudhsmv2.DescribeClustersInput{Filters: map[string][]string{"clusterIds": {id}}})
	if err != nil {
		return cluster{}, err
	}
	for _, cl := range out.Clusters {
		if aws.ToString(cl.ClusterId) != id {
			continue
		}
		r := cluster{state: string(cl.State), hsmType: aws.ToString(cl.HsmType)}
		for _, h := range cl.Hsms {
			r.hsms = append(r.hsms, hsm{id: aws.ToString(h.HsmId), zone: aws.ToString(h.AvailabilityZone), state: string(h.State), ip: aws.ToString(h.EniIp)})
		}
		return r, nil
	}
	return cluster{}, errClusterNotFound
}

// describeError turns a failed describe into an error code and a sentence
// for people. Neither quotes the API's message (which can hold the
// canonical request, security token included), a credential or a
// signature. The request id, when the API gave one, is returned for the
// log.
func describeError(err error, o Options) (code, msg, requestID string) {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		requestID = re.ServiceRequestID()
	}
	status := 0
	var hre *smithyhttp.ResponseError
	if errors.As(err, &hre) {
		status = hre.HTTPStatusCode()
	}
	var se *v4.SigningError
	var ce *credentialsError
	var ae smithy.APIError
	var ne net.Error
	switch {
	case errors.Is(err, errClusterNotFound):
		return "cluster_not_found", fmt.Sprintf("the management API lists no cluster %s in %s", o.ClusterID, o.Region), requestID
	case errors.As(err, &ce), errors.As(err, &se):
		return "no_credentials", "no AWS credentials were found for the management API (environment, shared config, " +
			"web identity or container credentials; the instance role needs use_instance_role: true)", requestID
	case errors.As(err, &ae):
		return ae.ErrorCode(), apiErrorSentence(ae.ErrorCode(), status, o), requestID
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout", fmt.Sprintf("the management API did not answer within %s", o.Timeout), requestID
	case errors.As(err, &ne):
		return "unreachable", "the management API cannot be reached (" + endpointOf(o) + "): " + netCause(err), requestID
	}
	return "error", "DescribeClusters failed: " + endpointOf(o) + " gave no usable answer", requestID
}

// apiErrorSentence explains an error code of the management API.
func apiErrorSentence(code string, status int, o Options) string {
	switch {
	case strings.Contains(code, "AccessDenied"):
		return fmt.Sprintf("access denied (%s): the credentials may not call cloudhsm:DescribeClusters on cluster %s", code, o.ClusterID)
	case strings.Contains(code, "Throttl"), code == "TooManyRequestsException", code == "RequestLimitExceeded":
		return fmt.Sprintf("the management API throttled DescribeClusters (%s); the next poll tries again", code)
	case code == "UnrecognizedClientException", code == "InvalidClientTokenId", code == "InvalidSignatureException",
		code == "SignatureDoesNotMatch", code == "IncompleteSignature", strings.HasPrefix(code, "ExpiredToken"):
		return fmt.Sprintf("the management API refused the credentials (%s): they are unknown, expired or for another partition", code)
	}
	return fmt.Sprintf("the management API answered %s (HTTP %d)", code, status)
}

func endpointOf(o Options) string {
	if o.Endpoint != "" {
		return o.Endpoint
	}
	return "cloudhsmv2." + o.Region + " regional endpoint"
}

// netCause is the innermost network error (connection refused, no such
// host, i/o timeout), without the URL the HTTP client wraps around it.
func netCause(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Op + ": " + oe.Err.Error()
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return "no such host " + de.Name
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) {
		return "its TLS certificate is not trusted"
	}
	return "network error"
}
