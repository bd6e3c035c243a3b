package audit

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkRecordParallel is the audit cost of concurrent requests, each
// waiting for its record to be durable (real fsyncs on the test's disk).
//
//	go test -run '^$' -bench RecordParallel ./internal/audit/
func BenchmarkRecordParallel(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	e := Event{RequestID: "0123456789abcdef01234567", Principal: "bench", ClientAddr: "127.0.0.1:50000", Operation: "sign",
		KeyID: "01a21965-ee5c-7b23-9263-296eb1b929ee", KeyName: "bench-key", KeyVersion: 1, Provider: "hsm",
		Algorithm: "ES256", Outcome: OutcomeSuccess, DurationMS: 0.25}
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Record(context.Background(), e); err != nil {
				b.Fatal(err)
			}
		}
	})
}
