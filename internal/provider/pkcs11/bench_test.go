package pkcs11

import (
	"context"
	"fmt"
	"testing"

	"github.com/keygrid/keygrid-hsm/internal/alg"
	"github.com/keygrid/keygrid-hsm/internal/provider"
)

// BenchmarkSignKeyCount signs with ES256 through the provider, rotating over
// 10 keys, on a token holding 10 and then 2,000 keys: with object handles
// cached, the number of objects on the token must not matter.
//
//	go test -run '^$' -bench SignKeyCount -benchtime 3s ./internal/provider/pkcs11/
func BenchmarkSignKeyCount(b *testing.B) {
	p := openTest(b, 2)
	ctx := context.Background()
	spec := alg.Spec{Type: alg.EC, Size: 256, Curve: "P-256"}
	info, _ := alg.Lookup("ES256")
	digest := alg.Digest(info, []byte("bench"))
	var refs []string
	grow := func(n int) {
		for len(refs) < n {
			k, err := p.CreateKey(ctx, provider.CreateKeyRequest{ObjectID: newID(), Label: fmt.Sprintf("bench-%d", len(refs)),
				Spec: spec, Usage: []alg.Usage{alg.UsageSign}})
			if err != nil {
				b.Fatal(err)
			}
			refs = append(refs, k.Ref)
		}
	}
	for _, n := range []int{10, 2000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			grow(n)
			use := refs[len(refs)-10:] // the newest ten: their handles are not cached yet
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := p.Sign(ctx, provider.SignRequest{Ref: use[i%len(use)], Spec: spec, Algorithm: info, Input: digest}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
