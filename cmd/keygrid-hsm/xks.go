package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/keygrid/keygrid-hsm/internal/config"
	"github.com/keygrid/keygrid-hsm/internal/xks"
	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/keygrid/keygrid-hsm/pkg/client"
)

func xksCmd(s *streams) *cobra.Command {
	return parent("xks", "the AWS KMS external key store (XKS) proxy: credentials, keys, load tests",
		parent("credentials", "SigV4 credentials for an external key store", xksCredentialsNewCmd(s)),
		xksKeysCmd(s), xksBenchCmd(s))
}

// newXKSCredential makes an access key id (24 characters of A-Z and 2-7:
// base32 of 15 random bytes) and a secret access key (base64 of 32 random
// bytes, 256 bits as the specification asks).
func newXKSCredential() (id, secret string) {
	b := make([]byte, 15+32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base32.StdEncoding.EncodeToString(b[:15]), base64.StdEncoding.EncodeToString(b[15:])
}

// kmsProxyFile is the JSON file the AWS KMS console takes for an external
// key store's proxy.
type kmsProxyFile struct {
	XksProxyURIPath                  string `json:"XksProxyUriPath"`
	XksProxyAuthenticationCredential struct {
		AccessKeyID        string `json:"AccessKeyId"`
		RawSecretAccessKey string `json:"RawSecretAccessKey"`
	} `json:"XksProxyAuthenticationCredential"`
}

func xksCredentialsNewCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "new", Short: "a fresh SigV4 credential and the file the KMS console takes",
		Example: "  keygrid-hsm xks credentials new --prefix keystores/team-a --store team-a",
		Args:    noArgs}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		prefix := fs.String("prefix", "", "the store's uri_prefix (for XksProxyUriPath)")
		store := fs.String("store", "main", "the store's name (for the configuration snippet)")
		return func(ctx context.Context) error {
			st := config.XKSStore{URIPrefix: strings.Trim(*prefix, "/")}
			id, secret := newXKSCredential()
			var f kmsProxyFile
			f.XksProxyURIPath = st.XKSPath()
			f.XksProxyAuthenticationCredential.AccessKeyID = id
			f.XksProxyAuthenticationCredential.RawSecretAccessKey = secret
			if c.output == "json" {
				return c.json(f)
			}
			env := "XKS_" + strings.ToUpper(strings.NewReplacer("-", "_").Replace(*store)) + "_SECRET"
			fmt.Fprintf(c.stdout, "access key id:      %s\nsecret access key:  %s\n\n", id, secret)
			fmt.Fprintln(c.stdout, "For the AWS KMS console (save as a file and upload it; then delete it):")
			b, _ := json.MarshalIndent(f, "", "  ")
			fmt.Fprintf(c.stdout, "%s\n\n", b)
			fmt.Fprintf(c.stdout, `For keygrid.yaml (the secret goes into the environment variable or a file, never the YAML):
      credentials:
        - access_key_id: %s
          secret_access_key_env: %s
`, id, env)
			return nil
		}
	})
}

// xksStore reads the configuration and returns the store named name.
func xksStore(path, name string) (config.XKSStore, error) {
	if path == "" {
		return config.XKSStore{}, errors.New("--config is required (the stores are in the gateway's configuration)")
	}
	cfg, err := config.Load(path, config.Flags{})
	if err != nil {
		return config.XKSStore{}, err
	}
	var names []string
	for _, s := range cfg.XKS.Stores {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return config.XKSStore{}, fmt.Errorf("no xks store %q in %s (stores: %s)", name, path, strings.Join(names, ", "))
}

// xksKey is one line of `xks keys`.
type xksKey struct {
	Name      string   `json:"name"`
	Provider  string   `json:"provider"`
	Version   int      `json:"version"`
	KeySpec   string   `json:"keySpec"`
	KeyUsage  []string `json:"keyUsage"`
	KeyStatus string   `json:"keyStatus"`
}

func xksKeysCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "keys STORE --config FILE", Short: "the keys a store serves, with their XKS metadata",
		Example: "  keygrid-hsm xks keys main --config /etc/keygrid-hsm/config.yaml",
		Args:    exactArgs(1, "STORE: the name of an XKS store in the configuration")}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		cfgPath := fs.String("config", "", "the gateway's configuration file (required)")
		return func(ctx context.Context) error {
			if len(c.posArgs) != 1 {
				return errors.New("xks keys: name one store")
			}
			st, err := xksStore(*cfgPath, c.posArgs[0])
			if err != nil {
				return err
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			var out []xksKey
			now := time.Now()
			for token := ""; ; {
				page, err := cl.ListKeys(ctx, client.ListOptions{Limit: 1000, PageToken: token})
				if err != nil {
					return err
				}
				for _, k := range page.Keys {
					if k.KeyType != "AES" || !xks.Serves(st, k.Name) || (k.State != "active" && k.State != "inactive") {
						continue
					}
					spec, usage, status := xks.KeyMetadata(k.KeySize, k.Usage, k.State, k.ExpiresAt, now)
					out = append(out, xksKey{Name: k.Name, Provider: k.Provider, Version: k.Version, KeySpec: spec, KeyUsage: usage, KeyStatus: status})
				}
				if token = page.NextPageToken; token == "" {
					break
				}
			}
			sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
			if c.output == "json" {
				if out == nil {
					out = []xksKey{}
				}
				return c.json(map[string]any{"store": st.Name, "xksProxyUriPath": st.XKSPath(), "keys": out})
			}
			fmt.Fprintf(c.stdout, "store %s at %s (keys %s)\n", st.Name, st.XKSPath(), strings.Join(st.Keys, " "))
			tw := tabwriter.NewWriter(c.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "EXTERNAL KEY ID\tPROVIDER\tVERSION\tKEY SPEC\tKEY USAGE\tKEY STATUS")
			for _, k := range out {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", k.Name, k.Provider, k.Version, k.KeySpec, strings.Join(k.KeyUsage, ","), k.KeyStatus)
			}
			return tw.Flush()
		}
	})
}

// XKSBenchResult is the outcome of `keygrid-hsm xks bench`.
type XKSBenchResult struct {
	Operation   string           `json:"operation"`
	Store       string           `json:"store"`
	Key         string           `json:"key,omitempty"`
	PayloadSize int              `json:"payload_bytes"`
	Concurrency int              `json:"concurrency"`
	TargetRate  float64          `json:"target_rate"`
	Requests    int64            `json:"requests"`
	Errors      int64            `json:"errors"`
	ErrorNames  map[string]int64 `json:"error_names,omitempty"`
	Seconds     float64          `json:"seconds"`
	Rate        float64          `json:"rate"`
	P50ms       float64          `json:"p50_ms"`
	P90ms       float64          `json:"p90_ms"`
	P99ms       float64          `json:"p99_ms"`
	MaxMs       float64          `json:"max_ms"`
}

// cmdXKSBench is a load generator speaking XKS as KMS does: every request
// signed here with SigV4 (the AWS SDK's signer) with one of the store's
// credentials. With --rate, requests are sent on a fixed schedule (an open
// loop: each latency counts from the moment the request was due, so a
// server that falls behind shows it); without, each worker sends as fast
// as answers come.
func xksBenchCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "bench --config FILE --store NAME --key KEY", Short: "load-test a store with requests signed like KMS's",
		Example: "  keygrid-hsm xks bench --config config.yaml --store main --key xks-bench --create-on software --rate 500",
		Args:    noArgs}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		var (
			cfgPath, storeName, key, op, createOn string
			conc, size                            int
			rate                                  float64
			dur, warmup                           time.Duration
		)
		fs.StringVar(&cfgPath, "config", "", "the gateway's configuration file (required: the store's prefix, region and credential)")
		fs.StringVar(&storeName, "store", "", "the store (required)")
		fs.StringVar(&key, "key", "", "the external key id (a gateway AES key the store serves; not for health)")
		fs.StringVar(&op, "op", "encrypt", "operation: encrypt, decrypt, metadata, health")
		fs.StringVar(&createOn, "create-on", "", "create --key on this provider when it does not exist (REST API, admin token)")
		fs.IntVar(&conc, "concurrency", 32, "parallel workers, each with its own keep-alive connection")
		fs.IntVar(&size, "size", 32, "plaintext bytes (a data key is 32)")
		fs.Float64Var(&rate, "rate", 0, "requests per second on a fixed schedule (0: as fast as the server answers)")
		fs.DurationVar(&dur, "duration", 10*time.Second, "how long to run")
		fs.DurationVar(&warmup, "warmup", time.Second, "unmeasured warm-up before the run")
		return func(ctx context.Context) error {
			if conc < 1 || size < 1 || rate < 0 {
				return errors.New("xks bench: --concurrency and --size must be at least 1, --rate not negative")
			}
			st, err := xksStore(cfgPath, storeName)
			if err != nil {
				return err
			}
			if op != "health" && key == "" {
				return errors.New("xks bench: --key is required")
			}
			secret, err := st.Credentials[0].SecretAccessKey("credentials[0]", nil)
			if err != nil {
				return err
			}
			if createOn != "" {
				cl, err := c.client()
				if err != nil {
					return err
				}
				if _, err := cl.GetKey(ctx, key); err != nil {
					if _, err := cl.CreateKey(ctx, apitypes.CreateKeyRequest{Name: key, Provider: createOn,
						KeySpec: apitypes.KeySpec{KeyType: "AES", KeySize: 256, Usage: []string{"encrypt", "decrypt"}}}); err != nil {
						return fmt.Errorf("xks bench: create key %q: %w", key, err)
					}
				}
			}
			transport := &http.Transport{MaxIdleConns: conc * 2, MaxIdleConnsPerHost: conc * 2, IdleConnTimeout: time.Minute}
			if tc, err := c.tlsConfig(); err != nil {
				return err
			} else if tc != nil {
				transport.TLSClientConfig = tc
			}
			defer transport.CloseIdleConnections()
			b := &xksBencher{hc: &http.Client{Transport: transport, Timeout: 30 * time.Second}, signer: v4.NewSigner(),
				base: strings.TrimRight(c.server, "/") + st.XKSPath(), region: st.Region,
				creds: aws.Credentials{AccessKeyID: st.Credentials[0].AccessKeyID, SecretAccessKey: secret}}
			path, body, err := b.request(ctx, op, key, size)
			if err != nil {
				return err
			}
			if warmup > 0 {
				wctx, cancel := context.WithTimeout(ctx, warmup)
				b.run(wctx, conc, 0, path, body)
				cancel()
			}
			rctx, cancel := context.WithTimeout(ctx, dur)
			defer cancel()
			start := time.Now()
			lat, names, failed := b.run(rctx, conc, rate, path, body)
			res := XKSBenchResult{Operation: op, Store: st.Name, Key: key, PayloadSize: size, Concurrency: conc, TargetRate: rate,
				Errors: failed, ErrorNames: names, Seconds: time.Since(start).Seconds()}
			res.Requests = int64(len(lat)) + failed
			res.Rate = float64(len(lat)) / res.Seconds
			slices.Sort(lat)
			pct := func(q float64) float64 {
				if len(lat) == 0 {
					return 0
				}
				return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) / 1000
			}
			res.P50ms, res.P90ms, res.P99ms = pct(0.50), pct(0.90), pct(0.99)
			if len(lat) > 0 {
				res.MaxMs = float64(lat[len(lat)-1].Microseconds()) / 1000
			}
			if c.output == "json" {
				return c.json(res)
			}
			target := "as fast as answered"
			if rate > 0 {
				target = fmt.Sprintf("target %.0f/s", rate)
			}
			fmt.Fprintf(c.stdout, "xks %s on %s/%s (%d bytes), concurrency %d, %s, %.1fs\n", op, st.Name, key, size, conc, target, res.Seconds)
			fmt.Fprintf(c.stdout, "  %.0f requests/s  %d requests  %d errors\n", res.Rate, res.Requests, res.Errors)
			fmt.Fprintf(c.stdout, "  latency p50 %.1fms  p90 %.1fms  p99 %.1fms  max %.1fms\n", res.P50ms, res.P90ms, res.P99ms, res.MaxMs)
			for _, n := range slices.Sorted(maps.Keys(names)) {
				fmt.Fprintf(c.stdout, "  error %s: %d\n", n, names[n])
			}
			return nil
		}
	})
}

// tlsConfig is the client TLS configuration of the common flags (nil:
// none).
func (c *cli) tlsConfig() (*tls.Config, error) {
	if c.caFile == "" && c.certFile == "" && c.certKey == "" {
		return nil, nil
	}
	return client.LoadTLSConfig(c.caFile, c.certFile, c.certKey)
}

// xksBencher sends signed XKS requests.
type xksBencher struct {
	hc     *http.Client
	signer *v4.Signer
	base   string
	region string
	creds  aws.Credentials
}

// request builds the path and body of op; for decrypt it encrypts once.
func (b *xksBencher) request(ctx context.Context, op, key string, size int) (string, []byte, error) {
	md := map[string]any{"awsPrincipalArn": "arn:aws:iam::111122223333:user/bench", "kmsKeyArn": "arn:aws:kms:" + b.region + ":111122223333:key/bench",
		"kmsOperation": "GenerateDataKey", "kmsRequestId": "bench"}
	pt := make([]byte, size)
	rand.Read(pt)
	enc := map[string]any{"requestMetadata": md, "plaintext": pt, "encryptionAlgorithm": "AES_GCM"}
	switch op {
	case "health":
		b, _ := json.Marshal(map[string]any{"requestMetadata": map[string]any{"kmsRequestId": "bench", "kmsOperation": "KmsHealthCheck"}})
		return "/health", b, nil
	case "metadata":
		md["kmsOperation"] = "DescribeKey"
		body, _ := json.Marshal(map[string]any{"requestMetadata": md})
		return "/keys/" + key + "/metadata", body, nil
	case "encrypt":
		body, _ := json.Marshal(enc)
		return "/keys/" + key + "/encrypt", body, nil
	case "decrypt":
		body, _ := json.Marshal(enc)
		status, out, err := b.send(ctx, "/keys/"+key+"/encrypt", body)
		if err != nil || status != http.StatusOK {
			return "", nil, fmt.Errorf("xks bench: the first encrypt: %d %s %v", status, out, err)
		}
		var e map[string]any
		if err := json.Unmarshal(out, &e); err != nil {
			return "", nil, err
		}
		md["kmsOperation"] = "Decrypt"
		dec := map[string]any{"requestMetadata": md, "encryptionAlgorithm": "AES_GCM", "ciphertext": e["ciphertext"],
			"ciphertextMetadata": e["ciphertextMetadata"], "initializationVector": e["initializationVector"], "authenticationTag": e["authenticationTag"]}
		body, _ = json.Marshal(dec)
		return "/keys/" + key + "/decrypt", body, nil
	}
	return "", nil, fmt.Errorf("xks bench: unknown --op %q", op)
}

// send signs and sends one request, reading the whole answer.
func (b *xksBencher) send(ctx context.Context, path string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	sum := sha256.Sum256(body)
	if err := b.signer.SignHTTP(ctx, b.creds, req, hex.EncodeToString(sum[:]), "kms-xks-proxy", b.region, time.Now()); err != nil {
		return 0, nil, err
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// run sends requests from n workers until ctx ends: on a schedule of rate
// per second, or as fast as answered (rate 0). It returns the latencies of
// the successes and the failures by error name.
func (b *xksBencher) run(ctx context.Context, n int, rate float64, path string, body []byte) ([]time.Duration, map[string]int64, int64) {
	var (
		mu     sync.Mutex
		lat    []time.Duration
		names  = map[string]int64{}
		failed atomic.Int64
		next   atomic.Int64
		wg     sync.WaitGroup
	)
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			local := map[string]int64{}
			for ctx.Err() == nil {
				due := time.Now()
				if rate > 0 {
					i := next.Add(1) - 1
					due = start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
					if wait := time.Until(due); wait > 0 {
						select {
						case <-ctx.Done():
							continue
						case <-time.After(wait):
						}
					}
				}
				status, out, err := b.send(ctx, path, body)
				d := time.Since(due)
				switch {
				case err != nil && ctx.Err() != nil:
				case err != nil:
					failed.Add(1)
					local["TransportError"]++
				case status != http.StatusOK:
					failed.Add(1)
					var e struct {
						ErrorName string `json:"errorName"`
					}
					json.Unmarshal(out, &e)
					local[e.ErrorName]++
				default:
					mine = append(mine, d)
				}
			}
			mu.Lock()
			lat = append(lat, mine...)
			for k, v := range local {
				names[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return lat, names, failed.Load()
}
