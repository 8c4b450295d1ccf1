package provider

import (
	"bytes"
	"testing"
	"time"
)

// BenchmarkDataKeyCache: 1 KiB messages through Encrypt and Decrypt, a new
// session key per message (as without a cache) or one reused from the
// data-key cache, in process on SoftHSM. The same at 1 ms per call is
// BenchmarkCalls/(En|De)crypt1KiB(Cached) in internal/reliability.
//
//	go test ./provider -run '^$' -bench DataKeyCache -benchtime 2s
func BenchmarkDataKeyCache(b *testing.B) {
	msg := bytes.Repeat([]byte{7}, 1<<10)
	for _, cached := range []bool{false, true} {
		name := "fresh"
		if cached {
			name = "cached"
		}
		p := openProvider(b, func(c *Config) {
			c.MaxSessions = 1
			if cached {
				c.DataKeyCache = &DataKeyCache{MaxMessages: 1 << 30, MaxAge: time.Hour}
			}
		})
		kek := benchKEK(b, p)
		var ct bytes.Buffer
		b.Run("Encrypt1KiB/"+name, func(b *testing.B) {
			defer cpuPerOp(b)() // the loop only, not the setup above
			for b.Loop() {
				ct.Reset()
				if err := p.Encrypt(bg, &ct, bytes.NewReader(msg), int64(len(msg)), []*KEK{kek}, Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
		msgCT := bytes.Clone(ct.Bytes())
		b.Run("Decrypt1KiB/"+name, func(b *testing.B) {
			var out bytes.Buffer
			defer cpuPerOp(b)() // the loop only, not the setup above
			for b.Loop() {
				out.Reset()
				if err := p.Decrypt(bg, &out, bytes.NewReader(msgCT), int64(len(msgCT)), Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
