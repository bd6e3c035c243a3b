package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keygrid/keygrid-hsm/pkg/apitypes"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// BenchResult is the outcome of `keygrid-hsm bench` (its --output json).
type BenchResult struct {
	Operation   string           `json:"operation"`
	Key         string           `json:"key"`
	Algorithm   string           `json:"algorithm,omitempty"`
	PayloadSize int              `json:"payload_bytes"`
	Concurrency int              `json:"concurrency"`
	Requests    int64            `json:"requests"`
	Errors      int64            `json:"errors"`
	ErrorCodes  map[string]int64 `json:"error_codes,omitempty"`
	Seconds     float64          `json:"seconds"`
	OpsPerSec   float64          `json:"ops_per_sec"`
	P50us       float64          `json:"p50_us"`
	P90us       float64          `json:"p90_us"`
	P99us       float64          `json:"p99_us"`
	MaxUs       float64          `json:"max_us"`
}

// cmdBench is a load generator against a running server: one operation on
// one key, from `concurrency` workers over keep-alive connections, for a
// duration or a number of requests.
func benchCmd(s *streams) *cobra.Command {
	cmd := &cobra.Command{Use: "bench --key KEY", Short: "load-test a running server: one operation on one key from many workers",
		Example: "  keygrid-hsm bench --op sign --key bench-ec --key-type EC --curve P-256 --concurrency 8 --duration 30s",
		Args:    noArgs}
	return clientCmd(s, cmd, nil, func(c *cli, fs *pflag.FlagSet) func(context.Context) error {
		var (
			op, key, keyType, curve, algorithm string
			size, conc, keySize                int
			count                              int64
			dur, warmup                        time.Duration
			progress                           bool
		)
		fs.StringVar(&op, "op", "sign", "operation: sign, verify, encrypt, decrypt, create")
		fs.StringVar(&key, "key", "", "key id or name (made with --key-type … when it does not exist; not for create)")
		fs.StringVar(&keyType, "key-type", "", "key type to create a key (or, for create, each key) with: RSA, EC, Ed25519, AES")
		fs.IntVar(&keySize, "key-size", 0, "key size for --key-type")
		fs.StringVar(&curve, "curve", "", "EC curve for --key-type")
		fs.StringVar(&algorithm, "algorithm", "", "algorithm (default: the key's)")
		fs.IntVar(&size, "size", 32, "payload bytes (data to sign, plaintext to encrypt)")
		fs.IntVar(&conc, "concurrency", 1, "parallel workers, each with its own keep-alive connection")
		fs.DurationVar(&dur, "duration", 10*time.Second, "how long to run (unless --count)")
		fs.Int64Var(&count, "count", 0, "stop after this many requests")
		fs.DurationVar(&warmup, "warmup", time.Second, "unmeasured warm-up before the run")
		fs.BoolVar(&progress, "progress", isTerminal(c.stderr), "a live progress line on stderr")
		return func(ctx context.Context) error {
			// The command line is checked whole before anything is sent
			// (a key is made only for a run that will go).
			if err := oneOf(c.cmd, "op", op, "sign", "verify", "encrypt", "decrypt", "create"); err != nil {
				return err
			}
			switch {
			case conc < 1 || size < 0:
				return usageErr(c.cmd, "bench: --concurrency must be at least 1 and --size not negative")
			case op != "create" && key == "":
				return usageErr(c.cmd, "bench: --key is required")
			case op == "create" && keyType == "":
				return usageErr(c.cmd, "bench: create needs --key-type")
			}
			cl, err := c.client()
			if err != nil {
				return err
			}
			token, err := c.resolveToken()
			if err != nil {
				return err
			}
			spec := apitypes.KeySpec{KeyType: keyType, KeySize: keySize, Curve: curve, Algorithm: algorithm}
			if op != "create" {
				if _, err := cl.GetKey(ctx, key); err != nil {
					if keyType == "" {
						return fmt.Errorf("bench: key %q: %w (give --key-type to create it)", key, err)
					}
					if op == "encrypt" || op == "decrypt" {
						spec.Usage = []string{"encrypt", "decrypt"}
					}
					if _, err := cl.CreateKey(ctx, apitypes.CreateKeyRequest{Name: key, KeySpec: spec}); err != nil {
						return fmt.Errorf("bench: create key %q: %w", key, err)
					}
				}
			}

			payload := make([]byte, size)
			rand.Read(payload)
			var run func(int, int64) (int, []byte, error)
			reqBody := func(v any) []byte { b, _ := json.Marshal(v); return b }
			base := strings.TrimRight(c.server, "/") + "/api/v1/keys/"
			switch op {
			case "sign":
				body := reqBody(apitypes.SignRequest{Data: payload, Algorithm: algorithm})
				run = func(int, int64) (int, []byte, error) { return post(base+key+"/sign", body, token) }
			case "verify":
				s, err := cl.Sign(ctx, key, apitypes.SignRequest{Data: payload, Algorithm: algorithm})
				if err != nil {
					return err
				}
				body := reqBody(apitypes.VerifyRequest{Data: payload, Signature: s.Signature, Algorithm: algorithm})
				run = func(int, int64) (int, []byte, error) { return post(base+key+"/verify", body, token) }
			case "encrypt":
				body := reqBody(apitypes.EncryptRequest{Plaintext: payload, Algorithm: algorithm})
				run = func(int, int64) (int, []byte, error) { return post(base+key+"/encrypt", body, token) }
			case "decrypt":
				e, err := cl.Encrypt(ctx, key, apitypes.EncryptRequest{Plaintext: payload, Algorithm: algorithm})
				if err != nil {
					return err
				}
				body := reqBody(apitypes.DecryptRequest{Ciphertext: e.Ciphertext, Algorithm: algorithm})
				run = func(int, int64) (int, []byte, error) { return post(base+key+"/decrypt", body, token) }
			case "create":
				prefix := fmt.Sprintf("bench-%d", time.Now().UnixNano())
				run = func(w int, i int64) (int, []byte, error) {
					return post(strings.TrimSuffix(base, "/"), reqBody(apitypes.CreateKeyRequest{Name: fmt.Sprintf("%s-%d-%d", prefix, w, i), KeySpec: spec}), token)
				}
			default:
				return fmt.Errorf("bench: unknown --op %q", op)
			}

			transport := &http.Transport{MaxIdleConns: conc * 2, MaxIdleConnsPerHost: conc * 2, IdleConnTimeout: time.Minute}
			benchHTTP = &http.Client{Transport: transport, Timeout: time.Minute}
			defer transport.CloseIdleConnections()

			if warmup > 0 && op != "create" {
				wctx, cancel := context.WithTimeout(ctx, warmup)
				runWorkers(wctx, conc, 0, run, nil)
				cancel()
			}
			res := BenchResult{Operation: op, Key: key, Algorithm: algorithm, PayloadSize: size, Concurrency: conc, ErrorCodes: map[string]int64{}}
			rctx := ctx
			if count == 0 {
				var cancel context.CancelFunc
				rctx, cancel = context.WithTimeout(ctx, dur)
				defer cancel()
			}
			var done, failed atomic.Int64
			stopProgress := make(chan struct{})
			start := time.Now()
			if progress {
				go func() {
					t := time.NewTicker(500 * time.Millisecond)
					defer t.Stop()
					for {
						select {
						case <-stopProgress:
							fmt.Fprint(c.stderr, "\r\033[K")
							return
						case <-t.C:
							el := time.Since(start).Seconds()
							fmt.Fprintf(c.stderr, "\r\033[K%s %s: %.0f ops/s, %d requests, %d errors, %.1fs", op, key,
								float64(done.Load())/el, done.Load(), failed.Load(), el)
						}
					}
				}()
			}
			lat, codes := runWorkers(rctx, conc, count, run, &stats{done: &done, failed: &failed})
			elapsed := time.Since(start)
			close(stopProgress)

			res.Requests, res.Errors, res.Seconds = done.Load(), failed.Load(), elapsed.Seconds()
			for k, v := range codes {
				res.ErrorCodes[k] = v
			}
			res.OpsPerSec = float64(res.Requests-res.Errors) / res.Seconds
			slices.Sort(lat)
			pct := func(q float64) float64 {
				if len(lat) == 0 {
					return 0
				}
				return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds())
			}
			res.P50us, res.P90us, res.P99us = pct(0.50), pct(0.90), pct(0.99)
			if len(lat) > 0 {
				res.MaxUs = float64(lat[len(lat)-1].Microseconds())
			}
			if c.output == "json" {
				return c.json(res)
			}
			fmt.Fprintf(c.stdout, "%s on %s (%s, %d bytes), concurrency %d, %.1fs\n", op, key, orDefault(algorithm, "key's algorithm"), size, conc, res.Seconds)
			fmt.Fprintf(c.stdout, "  %.0f ops/s  %d requests  %d errors\n", res.OpsPerSec, res.Requests, res.Errors)
			fmt.Fprintf(c.stdout, "  latency p50 %.0fµs  p90 %.0fµs  p99 %.0fµs  max %.0fµs\n", res.P50us, res.P90us, res.P99us, res.MaxUs)
			if len(res.ErrorCodes) > 0 {
				keys := make([]string, 0, len(res.ErrorCodes))
				for k := range res.ErrorCodes {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					fmt.Fprintf(c.stdout, "  error %s: %d\n", k, res.ErrorCodes[k])
				}
			}
			return nil
		}
	})
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

type stats struct{ done, failed *atomic.Int64 }

var benchHTTP *http.Client

// post sends one request and reads the whole answer (so the connection is
// reused). It returns the status and, on failure, the body.
func post(url string, body []byte, token string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := benchHTTP.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// runWorkers runs fn from n workers until ctx ends or count requests were
// sent (count 0: no limit). It returns every latency and the error codes.
func runWorkers(ctx context.Context, n int, count int64, fn func(int, int64) (int, []byte, error), st *stats) ([]time.Duration, map[string]int64) {
	var (
		mu    sync.Mutex
		all   []time.Duration
		codes = map[string]int64{}
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 4096)
			local := map[string]int64{}
			for ctx.Err() == nil {
				i := next.Add(1)
				if count > 0 && i > count {
					break
				}
				t0 := time.Now()
				status, body, err := fn(w, i)
				d := time.Since(t0)
				if st == nil {
					continue
				}
				st.done.Add(1)
				switch {
				case err != nil:
					if ctx.Err() != nil {
						st.done.Add(-1)
						continue
					}
					st.failed.Add(1)
					local["TRANSPORT_ERROR"]++
				case status >= 300:
					st.failed.Add(1)
					var e apitypes.ErrorBody
					json.Unmarshal(body, &e)
					local[string(e.Error.Code)]++
				default:
					lat = append(lat, d)
				}
			}
			mu.Lock()
			all = append(all, lat...)
			for k, v := range local {
				codes[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all, codes
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
