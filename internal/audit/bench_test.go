package audit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
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

// BenchmarkRecordSerial is the audit cost of a lone request (concurrency
// 1): the record leads its own batch at once, one write and one fdatasync.
//
//	go test -run '^$' -bench RecordSerial ./internal/audit/
func BenchmarkRecordSerial(b *testing.B) {
	for _, mode := range []struct {
		name     string
		interval time.Duration
	}{{"durable", 0}, {"fsync_interval_10ms", 10 * time.Millisecond}} {
		b.Run(mode.name, func(b *testing.B) {
			l, err := OpenWith(filepath.Join(b.TempDir(), "audit.log"), Options{SyncInterval: mode.interval})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			e := Event{RequestID: "0123456789abcdef01234567", Principal: "bench", ClientAddr: "127.0.0.1:50000", Operation: "sign",
				KeyID: "01a21965-ee5c-7b23-9263-296eb1b929ee", KeyName: "bench-key", KeyVersion: 1, Provider: "software",
				Algorithm: "ES256", Outcome: OutcomeSuccess, DurationMS: 0.05}
			b.ReportAllocs()
			for b.Loop() {
				if err := l.Record(context.Background(), e); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppendDatasync is the disk's floor for BenchmarkRecordSerial's
// durable case: a line of the same size appended and fdatasync'd, no log.
func BenchmarkAppendDatasync(b *testing.B) {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "probe"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	line := append(bytes.Repeat([]byte("x"), 399), '\n')
	for b.Loop() {
		if _, err := f.Write(line); err != nil {
			b.Fatal(err)
		}
		if err := datasync(f); err != nil {
			b.Fatal(err)
		}
	}
}
