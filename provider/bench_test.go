package provider

// Benchmarks: each operation through the provider beside "raw", the same
// PKCS#11 calls made directly through miekg in the same run (the floor),
// and, where it can do the job, "crypto11" (github.com/ThalesGroup/crypto11,
// what a Go user picks today). Ratios are in docs/performance.md.
//
//	go test ./provider -run '^$' -bench . -benchtime 2s -count 6
//
// crypto11 cannot share a module another part of the process initialised
// (it fails on CKR_CRYPTOKI_ALREADY_INITIALIZED), so when benchmarks run,
// TestMain lets crypto11 initialise the module and hold it; every test that
// needs the SO login must then be left out (-run '^$').

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

var benchState struct {
	once   sync.Once
	c11    *crypto11.Context
	c11Err error
	kek    string // label of an AES-256 KEK made before crypto11 logged in
}

// setupBench runs in TestMain when benchmarks are asked for.
func setupBench() error {
	a, err := OpenAdmin(bg, baseConfig(), PINValue([]byte(tok.soPIN)))
	if err != nil {
		return err
	}
	k, err := a.CreateKEKWith(bg, "bench-kek", KEKAES256, KEKOptions{AllowExposedAtRest: true})
	a.Close() // releases the module before crypto11 initialises it
	if err != nil {
		return err
	}
	benchState.kek = k.Label
	benchState.c11, benchState.c11Err = crypto11.Configure(&crypto11.Config{
		Path: tok.module, TokenLabel: tok.label, Pin: tok.userPIN, MaxSessions: 4,
	})
	return nil
}

func needCrypto11(b *testing.B) *crypto11.Context {
	b.Helper()
	needToken(b)
	if benchState.c11 == nil {
		b.Fatalf("crypto11 not configured (run benchmarks with -run '^$'): %v", benchState.c11Err)
	}
	return benchState.c11
}

// rawSessionKey generates a session key with the provider's template under
// ExportTrusted and reads its policy back, as Generate does for the first
// key of its kind (CheckEveryKey: for every key).
func rawSessionKey(b *testing.B, r *rawToken, size int) pkcs11.ObjectHandle {
	return rawSessionKeyChecked(b, r, size, true)
}

// rawSessionKeyChecked is rawSessionKey, reading the policy back only when
// readBack is true: Generate's default in steady state does not.
func rawSessionKeyChecked(b *testing.B, r *rawToken, size int, readBack bool) pkcs11.ObjectHandle {
	pol := []uint{pkcs11.CKA_TOKEN, pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_EXTRACTABLE,
		pkcs11.CKA_WRAP_WITH_TRUSTED, pkcs11.CKA_COPYABLE, pkcs11.CKA_ENCRYPT, pkcs11.CKA_DECRYPT, pkcs11.CKA_WRAP,
		pkcs11.CKA_UNWRAP, pkcs11.CKA_DERIVE, pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY}
	vals := []bool{false, true, true, true, true, false, true, true, false, false, false, false, false}
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, size),
	}
	q := make([]*pkcs11.Attribute, 0, len(pol)+1)
	for i, t := range pol {
		tmpl = append(tmpl, pkcs11.NewAttribute(t, vals[i]))
		q = append(q, &pkcs11.Attribute{Type: t})
	}
	q = append(q, &pkcs11.Attribute{Type: pkcs11.CKA_VALUE_LEN})
	h, err := r.ctx.GenerateKey(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, tmpl)
	if err != nil {
		b.Fatal(err)
	}
	if !readBack {
		return h
	}
	if _, err := r.ctx.GetAttributeValue(r.s, h, q); err != nil {
		b.Fatal(err)
	}
	return h
}

func gcmMechanism(nonce, aad []byte) ([]*pkcs11.Mechanism, *pkcs11.GCMParams) {
	p := pkcs11.NewGCMParams(nonce, aad, 128)
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, p)}, p
}

func BenchmarkGenerate(b *testing.B) {
	b.Run("provider", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		defer cpuPerOp(b)() // the loop only, not the setup above
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
	b.Run("provider-checkevery", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1; c.PolicyCheck = CheckEveryKey })
		defer cpuPerOp(b)() // the loop only, not the setup above
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
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			h := rawSessionKeyChecked(b, r, 32, false) // as the default in steady state
			if err := r.ctx.DestroyObject(r.s, h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("crypto11", func(b *testing.B) {
		c := needCrypto11(b)
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			attrs := crypto11.NewAttributeSet()
			if err := attrs.Set(crypto11.CkaToken, false); err != nil {
				b.Fatal(err)
			}
			if err := attrs.Set(crypto11.CkaId, []byte("bench")); err != nil {
				b.Fatal(err)
			}
			k, err := c.GenerateSecretKeyWithAttributes(attrs, 256, crypto11.CipherAES)
			if err != nil {
				b.Fatal(err)
			}
			if err := k.Delete(); err != nil {
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
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			if _, err := k.Seal(bg, msg, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("provider-observed", func(b *testing.B) {
		// Config.Logger (Info, to io.Discard) and every Metrics hook set:
		// what observing costs a Seal that neither waits nor retries.
		p := openProvider(b, func(c *Config) {
			c.MaxSessions = 1
			c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			c.Metrics = &Metrics{PoolWait: func(time.Duration) {}, Retry: func(string, uint) {}, KeyLost: func() {}, Relogin: func() {}}
		})
		k, err := p.Generate(bg, AES256)
		require.NoError(b, err)
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, err := k.Seal(bg, msg, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		r := openRaw(b)
		h := rawSessionKey(b, r, 32)
		b.Cleanup(func() { _ = r.ctx.DestroyObject(r.s, h) })
		b.SetBytes(int64(len(msg)))
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			var nonce [12]byte
			if _, err := rand.Read(nonce[:]); err != nil {
				b.Fatal(err)
			}
			mech, params := gcmMechanism(nonce[:], nil)
			if err := r.ctx.EncryptInit(r.s, mech, h); err != nil {
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
	b.Run("crypto11", func(b *testing.B) {
		c := needCrypto11(b)
		attrs := crypto11.NewAttributeSet()
		require.NoError(b, attrs.Set(crypto11.CkaToken, false))
		require.NoError(b, attrs.Set(crypto11.CkaId, []byte("bench-seal")))
		k, err := c.GenerateSecretKeyWithAttributes(attrs, 256, crypto11.CipherAES)
		require.NoError(b, err)
		b.Cleanup(func() { _ = k.Delete() })
		aead, err := k.NewGCM()
		require.NoError(b, err)
		b.SetBytes(int64(len(msg)))
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			var nonce [12]byte
			if _, err := rand.Read(nonce[:]); err != nil {
				b.Fatal(err)
			}
			// cipher.AEAD cannot return an error: crypto11 panics if the
			// token fails (docs/performance.md).
			_ = aead.Seal(nonce[:0:0], nonce[:], msg, nil)
		}
	})
}

// benchKEK returns the benchmark KEK, through p and raw.
func benchKEK(b *testing.B, p *Provider) *KEK {
	b.Helper()
	if benchState.kek == "" {
		b.Fatal("no benchmark kek (benchmarks set it up in TestMain)")
	}
	k, err := p.KEK(bg, benchState.kek)
	require.NoError(b, err)
	return k
}

func BenchmarkExport(b *testing.B) {
	b.Run("provider", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		kek := benchKEK(b, p)
		k, err := p.Generate(bg, AES256)
		require.NoError(b, err)
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			if _, err := p.Export(bg, k, []*KEK{kek}, Options{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		kek := benchKEK(b, p).obj.Wrap
		r := openRaw(b)
		h := rawSessionKey(b, r, 32)
		b.Cleanup(func() { _ = r.ctx.DestroyObject(r.s, h) })
		manifest := make([]byte, 64)
		// The key check value once (Export keeps it with the key).
		if _, err := r.ctx.GetAttributeValue(r.s, h, []*pkcs11.Attribute{{Type: pkcs11.CKA_CHECK_VALUE}}); err != nil {
			b.Fatal(err)
		}
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			// Wrap, manifest encryption: the calls Export makes.
			if _, err := r.ctx.WrapKey(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, pkcs11.ObjectHandle(kek), h); err != nil {
				b.Fatal(err)
			}
			var nonce [12]byte
			_, _ = rand.Read(nonce[:])
			mech, params := gcmMechanism(nonce[:], make([]byte, 80))
			if err := r.ctx.EncryptInit(r.s, mech, h); err != nil {
				b.Fatal(err)
			}
			_, err := r.ctx.Encrypt(r.s, manifest)
			params.Free()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkImport(b *testing.B) {
	b.Run("provider", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		kek := benchKEK(b, p)
		k, err := p.Generate(bg, AES256)
		require.NoError(b, err)
		blob, err := p.Export(bg, k, []*KEK{kek}, Options{})
		require.NoError(b, err)
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			back, err := p.Import(bg, blob, Options{})
			if err != nil {
				b.Fatal(err)
			}
			if err := back.Destroy(bg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		kek := benchKEK(b, p)
		k, err := p.Generate(bg, AES256)
		require.NoError(b, err)
		w, err := p.Wrap(bg, k, kek)
		require.NoError(b, err)
		r := openRaw(b)
		// The manifest sealed under k, as an exported key holds it.
		aad := make([]byte, 80)
		sealed, err := k.Seal(bg, make([]byte, 64), aad)
		require.NoError(b, err)
		// The provider's unwrap template, which the KEK's
		// CKA_UNWRAP_TEMPLATE requires (issue 11), made per key as it is.
		unwrapTmpl := p11.UnwrapTemplate()
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			tmpl := make([]*pkcs11.Attribute, len(unwrapTmpl))
			for i, a := range unwrapTmpl {
				tmpl[i] = pkcs11.NewAttribute(a.Type, a.Value)
			}
			h, err := r.ctx.UnwrapKey(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, pkcs11.ObjectHandle(kek.obj.Unwrap), w.Bytes, tmpl)
			if err != nil {
				b.Fatal(err)
			}
			// No read-back: the default reads back the first key a KEK unwraps only.
			mech, params := gcmMechanism(sealed[:12], aad)
			if err := r.ctx.DecryptInit(r.s, mech, h); err != nil {
				b.Fatal(err)
			}
			_, err = r.ctx.Decrypt(r.s, sealed[12:])
			params.Free()
			if err != nil {
				b.Fatal(err)
			}
			if err := r.ctx.EncryptInit(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, h); err != nil {
				b.Fatal(err)
			}
			if _, err := r.ctx.Encrypt(r.s, make([]byte, 16)); err != nil {
				b.Fatal(err)
			}
			if err := r.ctx.DestroyObject(r.s, h); err != nil {
				b.Fatal(err)
			}
		}
	})
}

const streamSize = 64 << 20

func BenchmarkEncryptStream(b *testing.B) {
	b.Run("provider", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		kek := benchKEK(b, p)
		b.SetBytes(streamSize)
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			if err := p.Encrypt(bg, io.Discard, &patternReader{n: streamSize}, streamSize, []*KEK{kek}, Options{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		p := openProvider(b, func(c *Config) { c.MaxSessions = 1 })
		kek := benchKEK(b, p).obj.Wrap
		r := openRaw(b)
		buf := make([]byte, DefaultChunkSize)
		b.SetBytes(streamSize)
		defer cpuPerOp(b)() // the loop only, not the setup above
		for b.Loop() {
			// A fresh key, wrapped; the content through multi-part GCM.
			h := rawSessionKey(b, r, 32)
			if _, err := r.ctx.WrapKey(r.s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}, pkcs11.ObjectHandle(kek), h); err != nil {
				b.Fatal(err)
			}
			var nonce [12]byte
			_, _ = rand.Read(nonce[:])
			mech, params := gcmMechanism(nonce[:], nil)
			if err := r.ctx.EncryptInit(r.s, mech, h); err != nil {
				b.Fatal(err)
			}
			src := &patternReader{n: streamSize}
			for {
				n, err := io.ReadFull(src, buf)
				if n > 0 {
					out, err := r.ctx.EncryptUpdate(r.s, buf[:n])
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Discard.Write(out)
				}
				if err != nil {
					break
				}
			}
			if _, err := r.ctx.EncryptFinal(r.s); err != nil {
				b.Fatal(err)
			}
			params.Free()
			if err := r.ctx.DestroyObject(r.s, h); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkChunkSize is how ChunkSize was chosen: 16 MiB through multi-part
// AES-GCM on the token in parts of each size (the raw calls, no format).
func BenchmarkChunkSize(b *testing.B) {
	const total = 16 << 20
	for _, size := range []int{4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			r := openRaw(b)
			h := rawSessionKey(b, r, 32)
			b.Cleanup(func() { _ = r.ctx.DestroyObject(r.s, h) })
			buf := make([]byte, size)
			b.SetBytes(total)
			defer cpuPerOp(b)() // the loop only, not the setup above
			for b.Loop() {
				var nonce [12]byte
				_, _ = rand.Read(nonce[:])
				mech, params := gcmMechanism(nonce[:], nil)
				if err := r.ctx.EncryptInit(r.s, mech, h); err != nil {
					b.Fatal(err)
				}
				for off := 0; off < total; off += size {
					if _, err := r.ctx.EncryptUpdate(r.s, buf); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := r.ctx.EncryptFinal(r.s); err != nil {
					b.Fatal(err)
				}
				params.Free()
			}
		})
	}
}

// cpuPerOp reports the CPU time (user and system, the whole process:
// SoftHSM runs in it) per operation as "cpu-µs/op", measured from the call
// to the returned function's: call it right before the b.Loop, so that the
// setup (an Open with its enforcement checks costs milliseconds) is left
// out. On a shared machine wall time swings with the load; CPU time much
// less, so the comparisons of docs/performance.md use it.
func cpuPerOp(b *testing.B) func() {
	start := cpuTime()
	return func() {
		if b.N > 0 {
			b.ReportMetric(float64((cpuTime()-start).Microseconds())/float64(b.N), "cpu-µs/op")
		}
	}
}
