package testbed

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// AWSCredentials are static AWS credentials for the tests.
type AWSCredentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
}

// TestAWSCredentials are made-up credentials of the form AWS uses.
var TestAWSCredentials = AWSCredentials{
	AccessKeyID:     "AKIAKEYGRIDTEST00001",
	SecretAccessKey: "kgTestSecret/0123456789abcdefghijklmnopqrst",
	SessionToken:    "kgTestSessionToken+FQoGZXIvYXdzEDoaDKeyGridTest0123456789",
}

// Setenv makes c the only credentials the AWS SDK's default chain finds:
// the environment, with the shared config and credentials files pointed at
// nothing and no profile.
func (c AWSCredentials) Setenv(t testing.TB) {
	t.Helper()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": c.AccessKeyID, "AWS_SECRET_ACCESS_KEY": c.SecretAccessKey, "AWS_SESSION_TOKEN": c.SessionToken,
		"AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
		"AWS_PROFILE": "", "AWS_REGION": "", "AWS_DEFAULT_REGION": "", "AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_CLOUDHSM_V2": "",
	} {
		t.Setenv(k, v)
	}
}

// FakeHSM is one HSM of a FakeCloudHSM cluster.
type FakeHSM struct {
	ID, Zone, State, IP string
}

// FakeCloudHSM stands in for AWS CloudHSM's management API (cloudhsmv2),
// which no test here can reach: an HTTP server speaking its JSON protocol
// (awsJson1_1; POST /, X-Amz-Target BaldrApiService.DescribeClusters),
// answering as AWS's API reference shapes it. The real SDK client talks to
// it through its endpoint setting (cloudhsm_endpoint).
//
// Every request's SigV4 signature is checked against the credentials given,
// independently of the SDK (this file computes it); a request that is not
// signed with them is refused as AWS refuses it, with
// InvalidSignatureException — whose message, like AWS's, quotes the
// canonical request, security token included, so that tests can check such
// a message never reaches a log or a response.
type FakeCloudHSM struct {
	URL    string
	srv    *httptest.Server
	creds  AWSCredentials
	region string

	mu        sync.Mutex
	clusterID string
	state     string
	hsmType   string
	hsms      []FakeHSM
	failure   *fakeFailure
	hang      time.Duration
	calls     int
	badSigs   int
	auths     []string // Authorization headers received
}

type fakeFailure struct {
	status        int
	code, message string
}

// NewFakeCloudHSM starts the stand-in for region, with an ACTIVE cluster
// clusterID of type hsm2m.medium and no HSM; it is closed at the end of the
// test.
func NewFakeCloudHSM(t testing.TB, creds AWSCredentials, region, clusterID string) *FakeCloudHSM {
	f := &FakeCloudHSM{creds: creds, region: region, clusterID: clusterID, state: "ACTIVE", hsmType: "hsm2m.medium"}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL
	t.Cleanup(f.srv.Close)
	return f
}

// SetHSMs sets the cluster's HSMs.
func (f *FakeCloudHSM) SetHSMs(hsms ...FakeHSM) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hsms = slices.Clone(hsms)
}

// SetClusterState sets the cluster's state (ACTIVE, DEGRADED, …).
func (f *FakeCloudHSM) SetClusterState(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = s
}

// Fail makes every request fail with an AWS error (status, __type code,
// message) until Recover.
func (f *FakeCloudHSM) Fail(status int, code, message string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failure = &fakeFailure{status, code, message}
}

// Hang makes every request wait d before it is answered, until Recover.
func (f *FakeCloudHSM) Hang(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hang = d
}

// Recover ends Fail and Hang.
func (f *FakeCloudHSM) Recover() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failure, f.hang = nil, 0
}

// Calls counts the requests received; BadSignatures those whose signature
// did not verify.
func (f *FakeCloudHSM) Calls() (calls, badSignatures int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, f.badSigs
}

// Authorizations returns the Authorization headers received (their
// signatures, to look for in logs).
func (f *FakeCloudHSM) Authorizations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.auths)
}

func (f *FakeCloudHSM) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.calls++
	f.auths = append(f.auths, r.Header.Get("Authorization"))
	hang, failure := f.hang, f.failure
	f.mu.Unlock()
	if hang > 0 {
		select {
		case <-time.After(hang):
		case <-r.Context().Done():
			return
		}
	}
	if msg := f.verify(r, body); msg != "" {
		f.mu.Lock()
		f.badSigs++
		f.mu.Unlock()
		awsError(w, http.StatusBadRequest, "InvalidSignatureException", msg)
		return
	}
	if failure != nil {
		awsError(w, failure.status, failure.code, failure.message)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/" || r.Header.Get("Content-Type") != "application/x-amz-json-1.1" {
		awsError(w, http.StatusBadRequest, "SerializationException", "not an awsJson1_1 request")
		return
	}
	if target := r.Header.Get("X-Amz-Target"); target != "BaldrApiService.DescribeClusters" {
		awsError(w, http.StatusBadRequest, "UnknownOperationException", "unknown operation "+target)
		return
	}
	var in struct {
		Filters map[string][]string
	}
	if err := json.Unmarshal(body, &in); err != nil {
		awsError(w, http.StatusBadRequest, "SerializationException", "the body is not JSON")
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-RequestId", fmt.Sprintf("fake-request-%d", time.Now().UnixNano()))
	json.NewEncoder(w).Encode(map[string]any{"Clusters": f.clusters(in.Filters["clusterIds"])})
}

// clusters answers DescribeClusters with the clusterIds filter, in the
// shape of the API reference.
func (f *FakeCloudHSM) clusters(ids []string) []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(ids) > 0 && !slices.Contains(ids, f.clusterID) {
		return []map[string]any{}
	}
	hsms := []map[string]any{}
	subnets := map[string]string{}
	for i, h := range f.hsms {
		subnet := fmt.Sprintf("subnet-%08x", i+1)
		subnets[h.Zone] = subnet
		hsms = append(hsms, map[string]any{
			"AvailabilityZone": h.Zone, "ClusterId": f.clusterID, "EniId": fmt.Sprintf("eni-%08x", i+1), "EniIp": h.IP,
			"HsmId": h.ID, "HsmType": f.hsmType, "State": h.State, "StateMessage": "HSM created.", "SubnetId": subnet,
		})
	}
	return []map[string]any{{
		"BackupPolicy": "DEFAULT", "BackupRetentionPolicy": map[string]any{"Type": "DAYS", "Value": "90"},
		"ClusterId": f.clusterID, "CreateTimestamp": 1.7e9, "Hsms": hsms, "HsmType": f.hsmType, "Mode": "FIPS",
		"SecurityGroup": "sg-0123456789abcdef0", "State": f.state, "StateMessage": "The cluster is " + strings.ToLower(f.state) + ".",
		"SubnetMapping": subnets, "TagList": []any{}, "VpcId": "vpc-0123456789abcdef0", "NetworkType": "IPV4",
	}}
}

func awsError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-RequestId", fmt.Sprintf("fake-request-%d", time.Now().UnixNano()))
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": code, "message": message})
}

// verify checks r's SigV4 signature (AWS4-HMAC-SHA256, service cloudhsm)
// with f's credentials; it returns why it does not verify, or "".
func (f *FakeCloudHSM) verify(r *http.Request, body []byte) string {
	auth := r.Header.Get("Authorization")
	const algo = "AWS4-HMAC-SHA256 "
	if !strings.HasPrefix(auth, algo) {
		return "the request is not signed with AWS4-HMAC-SHA256"
	}
	parts := map[string]string{}
	for _, p := range strings.Split(strings.TrimPrefix(auth, algo), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		parts[k] = v
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil || time.Since(t).Abs() > 5*time.Minute {
		return "X-Amz-Date is missing or not within 5 minutes"
	}
	scope := strings.Join([]string{amzDate[:8], f.region, "cloudhsm", "aws4_request"}, "/")
	if parts["Credential"] != f.creds.AccessKeyID+"/"+scope {
		return "the credential scope is not " + f.creds.AccessKeyID + "/" + scope
	}
	signed := strings.Split(parts["SignedHeaders"], ";")
	for _, h := range []string{"host", "x-amz-date", "x-amz-target"} {
		if !slices.Contains(signed, h) {
			return "the signature does not cover " + h
		}
	}
	if f.creds.SessionToken != "" && (r.Header.Get("X-Amz-Security-Token") != f.creds.SessionToken || !slices.Contains(signed, "x-amz-security-token")) {
		return "the security token is missing or not signed"
	}
	var canon strings.Builder
	canon.WriteString(r.Method + "\n" + r.URL.EscapedPath() + "\n" + r.URL.Query().Encode() + "\n")
	for _, h := range signed {
		var v string
		switch h {
		case "host":
			v = r.Host
		case "content-length":
			v = strconv.FormatInt(r.ContentLength, 10)
		default:
			vs := r.Header.Values(h)
			for i := range vs {
				vs[i] = strings.Join(strings.Fields(vs[i]), " ")
			}
			v = strings.Join(vs, ",")
		}
		canon.WriteString(h + ":" + v + "\n")
	}
	bodyHash := sha256.Sum256(body)
	canon.WriteString("\n" + parts["SignedHeaders"] + "\n" + hex.EncodeToString(bodyHash[:]))
	canonHash := sha256.Sum256([]byte(canon.String()))
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hex.EncodeToString(canonHash[:])
	key := []byte("AWS4" + f.creds.SecretAccessKey)
	for _, s := range []string{amzDate[:8], f.region, "cloudhsm", "aws4_request", toSign} {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(s))
		key = m.Sum(nil)
	}
	if !hmac.Equal([]byte(hex.EncodeToString(key)), []byte(parts["Signature"])) {
		// As AWS does: the canonical request and the string to sign.
		return "The request signature we calculated does not match the signature you provided. " +
			"The Canonical String for this request should have been\n'" + canon.String() + "'\n\nThe String-to-Sign should have been\n'" + toSign + "'\n"
	}
	return ""
}
