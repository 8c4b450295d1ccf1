package provider

// Benchmarks: each operation through the provider beside "raw", the same
// PKCS#11 calls made directly through miekg in the same run, so the
// provider's overhead reads as a ratio (docs/performance.md).
//
//	go test ./provider -run '^$' -bench . -benchtime 2s -count 5

import (
	"crypto/rand"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"
)

func BenchmarkGenerate(b *testing.B) {
	b.Run("provider", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		b.ResetTimer()
		for b.Loop() {
			k, err := p.Generate(bg, AES256)
			if err != nil {
				b.Fatal(err)
			}
			if err := k.Destroy(bg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		r := openRaw(b)
		mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}
		pol := []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
			pkcs11.CKA_WRAP_WITH_TRUSTED, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP,
			pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY}
		vals := []bool{false, true, true, false, false, true, true, false, false, false, false, false}
		b.ResetTimer()
		for b.Loop() {
			// The same template and read-back the provider makes.
			tmpl := []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			}
			q := make([]*pkcs11.Attribute, 0, len(pol)+1)
			for i, t := range pol {
				tmpl = append(tmpl, pkcs11.NewAttribute(t, vals[i]))
				q = append(q, &pkcs11.Attribute{Type: t})
			}
			q = append(q, &pkcs11.Attribute{Type: pkcs11.CKA_VALUE_LEN})
			h, err := r.ctx.GenerateKey(r.s, mech, tmpl)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := r.ctx.GetAttributeValue(r.s, h, q); err != nil {
				b.Fatal(err)
			}
			if err := r.ctx.DestroyObject(r.s, h); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkSeal1KiB(b *testing.B) {
	msg := make([]byte, 1024)
	b.Run("provider", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		k, err := p.Generate(bg, AES256)
		require.NoError(b, err)
		b.SetBytes(int64(len(msg)))
		b.ResetTimer()
		for b.Loop() {
			if _, err := k.Seal(bg, msg, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		r := openRaw(b)
		h, err := r.ctx.GenerateKey(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		})
		require.NoError(b, err)
		b.Cleanup(func() { _ = r.ctx.DestroyObject(r.s, h) })
		b.SetBytes(int64(len(msg)))
		b.ResetTimer()
		for b.Loop() {
			var nonce [12]byte
			if _, err := rand.Read(nonce[:]); err != nil {
				b.Fatal(err)
			}
			params := pkcs11.NewGCMParams(nonce[:], nil, 128)
			if err := r.ctx.EncryptInit(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
				b.Fatal(err)
			}
			ct, err := r.ctx.Encrypt(r.s, msg)
			params.Free()
			if err != nil {
				b.Fatal(err)
			}
			out := make([]byte, 0, 12+len(ct))
			_ = append(append(out, nonce[:]...), ct...)
		}
	})
}
