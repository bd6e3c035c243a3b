package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// reflectLine is the line as it was built before the hand encoder, with
// encoding/json: the reference the hand encoder must match byte for byte.
func reflectLine(seq uint64, prev string, e Event) ([]byte, string, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return nil, "", err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"seq":%d,`, seq)
	b.Write(body[1 : len(body)-1])
	fmt.Fprintf(&b, `,"prev_hash":%q`, prev)
	sum := sha256.Sum256(append(b.Bytes(), '}'))
	h := hex.EncodeToString(sum[:])
	fmt.Fprintf(&b, `,"hash":%q}`+"\n", h)
	return b.Bytes(), h, nil
}

// checkSameLine fails t unless appendLine and the encoding/json reference
// agree on e (bytes, hash and error), and a line they make verifies.
func checkSameLine(t *testing.T, seq uint64, e Event) {
	t.Helper()
	want, wantHash, wantErr := reflectLine(seq, ZeroHash, e)
	prefix := []byte("earlier bytes\n")
	got, gotHash, gotErr := appendLine(bytes.Clone(prefix), seq, ZeroHash, e)
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("error: hand %v, encoding/json %v (event %#v)", gotErr, wantErr, e)
	}
	if !bytes.Equal(got[:len(prefix)], prefix) {
		t.Fatalf("appendLine changed the bytes before it: %q", got)
	}
	if wantErr != nil {
		if len(got) != len(prefix) {
			t.Fatalf("appendLine left %q after an error", got[len(prefix):])
		}
		return
	}
	got = got[len(prefix):]
	if !bytes.Equal(got, want) || gotHash != wantHash {
		t.Fatalf("hand encoder differs from encoding/json:\n hand %s\n json %s", got, want)
	}
	if seq == 1 {
		if _, last, err := Verify(bytes.NewReader(got), ""); err != nil || last != gotHash {
			t.Fatalf("the line does not verify: %v (last %s)", err, last)
		}
	}
}

func TestHandEncoderMatchesEncodingJSON(t *testing.T) {
	full := Event{Time: time.Date(2026, 12, 2, 14, 5, 6, 123456789, time.UTC), RequestID: "0123456789abcdef01234567",
		ClientRequestID: "client-1", Principal: "alice", ClientAddr: "127.0.0.1:50000", Operation: "sign",
		KeyID: "01a21965-ee5c-7b23-9263-296eb1b929ee", KeyName: "k", KeyVersion: 3, Provider: "hsm", Algorithm: "ES256",
		Outcome: OutcomeFailure, ErrorCode: "KEY_INACTIVE", DurationMS: 0.25, Detail: "d", ErrorName: "InvalidStateException",
		Attributes: map[string]string{"z": "1", "a": "<&>", "m": "\u2028"}}
	cases := map[string]Event{
		"zero":                 {},
		"full":                 full,
		"minimal":              {Time: time.Now(), Operation: "x", Outcome: OutcomeSuccess},
		"escapes":              {Detail: "\"\\\b\f\n\r\t\x00\x1f\x7f<>&'\u2028\u2029é\xff\xc3(日本"},
		"negative version":     {KeyVersion: -7},
		"empty attributes":     {Attributes: map[string]string{}},
		"empty attribute key":  {Attributes: map[string]string{"": ""}},
		"tiny duration":        {DurationMS: 1e-7},
		"huge duration":        {DurationMS: 1e21},
		"negative duration":    {DurationMS: -0.000001},
		"exponent 2 digits":    {DurationMS: 1.5e-10},
		"exponent 3 digits":    {DurationMS: 1e-300},
		"max float":            {DurationMS: math.MaxFloat64},
		"negative zero":        {DurationMS: math.Copysign(0, -1)},
		"NaN refused":          {DurationMS: math.NaN()},
		"Inf refused":          {DurationMS: math.Inf(1)},
		"year 10000 refused":   {Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)},
		"year -1 refused":      {Time: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)},
		"local zone":           {Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", -(5*3600+30*60)))},
		"zone with seconds":    {Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600+7))},
		"zone 24h":             {Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 24*3600))},
		"monotonic clock read": {Time: time.Now()},
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) { checkSameLine(t, 1, e) })
	}
	checkSameLine(t, math.MaxUint64, full)
}

// FuzzHandEncoder: for any event, the hand encoder writes what
// encoding/json writes (so hashes and the format stay the same).
func FuzzHandEncoder(f *testing.F) {
	f.Add(uint64(1), int64(1764684306123456789), 0, "req", "alice", "sign", "key", 1, "ES256", "success", 0.25, "", "k", "v")
	f.Add(uint64(9), int64(-62135596800000000), 3600, "<&>\u2028", "\xff", "", "", -3, "", "", 1e-9, "\x00\n", "", "")
	f.Add(uint64(0), int64(253402300800000000), -1, "日本", "\"\\", "op", "x", 0, "a", "b", 1e22, "d", "\t", "\x7f")
	f.Fuzz(func(t *testing.T, seq uint64, unixNano int64, zone int, reqID, principal, op, keyName string,
		version int, alg, outcome string, dur float64, detail, attrK, attrV string) {
		e := Event{Time: time.Unix(0, unixNano).In(time.FixedZone("z", zone)), RequestID: reqID, Principal: principal,
			Operation: op, KeyName: keyName, KeyVersion: version, Algorithm: alg, Outcome: outcome,
			DurationMS: dur, Detail: detail, ClientAddr: strings.ToUpper(detail)}
		if attrK != "" || attrV != "" {
			e.Attributes = map[string]string{attrK: attrV, attrV + "2": attrK}
		}
		checkSameLine(t, seq, e)
	})
}

func BenchmarkLine(b *testing.B) {
	e := Event{Time: time.Now().UTC(), RequestID: "0123456789abcdef01234567", Principal: "bench", ClientAddr: "127.0.0.1:50000",
		Operation: "sign", KeyID: "01a21965-ee5c-7b23-9263-296eb1b929ee", KeyName: "bench-key", KeyVersion: 1,
		Provider: "software", Algorithm: "ES256", Outcome: OutcomeSuccess, DurationMS: 0.0421}
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for b.Loop() {
			buf, _, _ = appendLine(buf[:0], 42, ZeroHash, e)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			reflectLine(42, ZeroHash, e)
		}
	})
}
