package provider

import "testing"

// BenchmarkOpen is Open and Close under export policy trusted: the login
// and the enforcement checks (six, each with its premise; two throw-away
// RSA-1024 pairs among them).
func BenchmarkOpen(b *testing.B) {
	needToken(b)
	for i := 0; i < b.N; i++ {
		p, err := Open(bg, baseConfig())
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
