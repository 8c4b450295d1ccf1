//go:build cgo && unix

package ckraw_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"sync"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/stretchr/testify/require"

	"github.com/hsmkeys/hsmkeys/provider/internal/ckraw"
)

const gcmTag = 16

var gcmSizes = []int{0, 1, 16, 1000, 65536, 1 << 20}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// gcmInit starts an AES-GCM operation (128-bit tag) through miekg.
func gcmInit(t testing.TB, f *fixture, s pkcs11.SessionHandle, key pkcs11.ObjectHandle, encrypt bool, nonce, aad []byte) {
	t.Helper()
	params := pkcs11.NewGCMParams(nonce, aad, gcmTag*8)
	defer params.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
	if encrypt {
		require.NoError(t, f.p.EncryptInit(s, mech, key))
	} else {
		require.NoError(t, f.p.DecryptInit(s, mech, key))
	}
}

// calls returns the number of C_Encrypt/C_Decrypt/C_WrapKey calls fn made.
func calls(fn func()) uint64 {
	before := ckraw.OutputCalls()
	fn()
	return ckraw.OutputCalls() - before
}

// aesKey makes a session AES key with a known value.
func aesKey(t testing.TB, f *fixture, s pkcs11.SessionHandle, value []byte, wrap bool) pkcs11.ObjectHandle {
	t.Helper()
	k, err := f.p.CreateObject(s, attrs(map[uint]any{
		pkcs11.CKA_CLASS:       pkcs11.CKO_SECRET_KEY,
		pkcs11.CKA_KEY_TYPE:    pkcs11.CKK_AES,
		pkcs11.CKA_TOKEN:       false,
		pkcs11.CKA_VALUE:       value,
		pkcs11.CKA_ENCRYPT:     true,
		pkcs11.CKA_DECRYPT:     true,
		pkcs11.CKA_WRAP:        wrap,
		pkcs11.CKA_EXTRACTABLE: true,
	}))
	require.NoError(t, err)
	return k
}

func TestGCMEncryptDecrypt(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	key := sessionKey(t, f, s, false)
	sess := uint(s)

	for _, size := range gcmSizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			pt := randBytes(t, size)
			nonce := randBytes(t, 12)
			aad := []byte("header")

			gcmInit(t, f, s, key, true, nonce, aad)
			want, err := f.p.Encrypt(s, pt)
			require.NoError(t, err)
			require.Len(t, want, size+gcmTag)

			seal := func(outCap int) []byte {
				t.Helper()
				gcmInit(t, f, s, key, true, nonce, aad)
				got, err := f.raw.Encrypt(sess, pt, outCap)
				require.NoError(t, err)
				return got
			}
			open := func(ct []byte, outCap int) []byte {
				t.Helper()
				gcmInit(t, f, s, key, false, nonce, aad)
				got, err := f.raw.Decrypt(sess, ct, outCap)
				require.NoError(t, err)
				return got
			}

			var got []byte
			require.EqualValues(t, 1, calls(func() { got = seal(size + gcmTag) }), "exact capacity takes one call")
			require.Equal(t, want, got)
			require.Equal(t, len(got), cap(got), "no spare capacity past the output")
			require.EqualValues(t, 1, calls(func() { got = seal(2*size + 100) }), "generous capacity")
			require.Equal(t, want, got)
			for _, small := range []int{0, 1, size + gcmTag - 1} {
				require.EqualValues(t, 2, calls(func() { got = seal(small) }), "capacity %d falls back", small)
				require.Equal(t, want, got, "capacity %d", small)
			}

			// SoftHSM wants len(ct) bytes of room, tag included (see the BUG
			// note on Decrypt).
			require.EqualValues(t, 1, calls(func() { got = open(want, len(want)) }))
			require.Equal(t, pt, got)
			require.Len(t, got, size)
			n := calls(func() { got = open(want, size) })
			t.Logf("Decrypt with capacity len(ct)-16: %d C_Decrypt calls", n)
			require.Equal(t, pt, got)
			require.EqualValues(t, 2, calls(func() { got = open(want, 0) }))
			require.Equal(t, pt, got)
		})
	}
}

// TestGCMMatchesGo checks the output against crypto/cipher with a known key.
func TestGCMMatchesGo(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	value := randBytes(t, 32)
	key := aesKey(t, f, s, value, false)
	block, err := aes.NewCipher(value)
	require.NoError(t, err)
	aead, err := cipher.NewGCM(block)
	require.NoError(t, err)

	for _, size := range []int{0, 1, 1000} {
		pt, nonce, aad := randBytes(t, size), randBytes(t, 12), randBytes(t, 7)
		gcmInit(t, f, s, key, true, nonce, aad)
		got, err := f.raw.Encrypt(uint(s), pt, size+gcmTag)
		require.NoError(t, err)
		require.Equal(t, aead.Seal(nil, nonce, pt, aad), got, "size %d", size)
	}
}

// TestGCMLarge seals and opens 64 MiB in one call each.
func TestGCMLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping 64 MiB in -short mode")
	}
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	key := sessionKey(t, f, s, false)
	pt := randBytes(t, 64<<20)
	nonce := randBytes(t, 12)

	gcmInit(t, f, s, key, true, nonce, nil)
	ct, err := f.raw.Encrypt(uint(s), pt, len(pt)+gcmTag)
	require.NoError(t, err)
	require.Len(t, ct, len(pt)+gcmTag)
	gcmInit(t, f, s, key, false, nonce, nil)
	got, err := f.raw.Decrypt(uint(s), ct, len(ct))
	require.NoError(t, err)
	require.True(t, bytes.Equal(pt, got))
}

func TestGCMTagMismatch(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	key := sessionKey(t, f, s, false)
	sess := uint(s)
	pt, nonce := randBytes(t, 1000), randBytes(t, 12)

	gcmInit(t, f, s, key, true, nonce, nil)
	ct, err := f.raw.Encrypt(sess, pt, len(pt)+gcmTag)
	require.NoError(t, err)

	for _, tc := range []struct {
		name   string
		ct     []byte
		outCap int
	}{
		{"tag bit flipped", flip(ct, len(ct)-1), len(ct)},
		{"ciphertext bit flipped", flip(ct, 0), len(ct)},
		{"bit flipped, capacity too small", flip(ct, 3), 0},
		{"truncated", ct[:len(ct)-1], len(ct)},
		{"shorter than a tag", ct[:5], 5},
		{"empty", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gcmInit(t, f, s, key, false, nonce, nil)
			got, err := f.raw.Decrypt(sess, tc.ct, tc.outCap)
			t.Logf("SoftHSM: %v", err)
			require.ErrorIs(t, err, ckr(pkcs11.CKR_GENERAL_ERROR))
			require.Nil(t, got)

			// The failure ended the operation; the session is usable.
			gcmInit(t, f, s, key, false, nonce, nil)
			got, err = f.raw.Decrypt(sess, ct, len(ct))
			require.NoError(t, err)
			require.Equal(t, pt, got)
		})
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func TestECB(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	key := sessionKey(t, f, s, false)
	ecb := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}

	for _, size := range []int{0, 16, 4096} {
		pt := randBytes(t, size)
		require.NoError(t, f.p.EncryptInit(s, ecb, key))
		want, err := f.p.Encrypt(s, pt)
		require.NoError(t, err)

		require.NoError(t, f.p.EncryptInit(s, ecb, key))
		var got []byte
		require.EqualValues(t, 1, calls(func() { got, err = f.raw.Encrypt(uint(s), pt, size) }))
		require.NoError(t, err)
		require.Equal(t, want, got, "size %d", size)

		require.NoError(t, f.p.DecryptInit(s, ecb, key))
		require.EqualValues(t, 1, calls(func() { got, err = f.raw.Decrypt(uint(s), want, size) }))
		require.NoError(t, err)
		require.Equal(t, pt, got, "size %d", size)
	}
}

func TestWrapKey(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	sess := uint(s)
	kek, err := f.p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		attrs(map[uint]any{
			pkcs11.CKA_CLASS:     pkcs11.CKO_SECRET_KEY,
			pkcs11.CKA_KEY_TYPE:  pkcs11.CKK_AES,
			pkcs11.CKA_VALUE_LEN: 32,
			pkcs11.CKA_TOKEN:     false,
			pkcs11.CKA_WRAP:      true,
			pkcs11.CKA_UNWRAP:    true,
		}))
	require.NoError(t, err)
	key := sessionKey(t, f, s, false)

	for _, tc := range []struct {
		name string
		mech uint
		size int
	}{
		{"AES-KW", pkcs11.CKM_AES_KEY_WRAP, 32 + 8},
		{"AES-KWP", pkcs11.CKM_AES_KEY_WRAP_PAD, 32 + 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want, err := f.p.WrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(tc.mech, nil)}, kek, key)
			require.NoError(t, err)
			require.Len(t, want, tc.size)

			var got []byte
			require.EqualValues(t, 1, calls(func() { got, err = f.raw.WrapKey(sess, tc.mech, uint(kek), uint(key), tc.size) }))
			require.NoError(t, err)
			require.Equal(t, want, got)
			for _, small := range []int{0, 1, tc.size - 1} {
				require.EqualValues(t, 2, calls(func() { got, err = f.raw.WrapKey(sess, tc.mech, uint(kek), uint(key), small) }))
				require.NoError(t, err)
				require.Equal(t, want, got, "capacity %d", small)
			}

			// The blob unwraps to the same key.
			k, err := f.p.UnwrapKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(tc.mech, nil)}, kek, got, attrs(map[uint]any{
				pkcs11.CKA_CLASS:    pkcs11.CKO_SECRET_KEY,
				pkcs11.CKA_KEY_TYPE: pkcs11.CKK_AES,
				pkcs11.CKA_TOKEN:    false,
				pkcs11.CKA_ENCRYPT:  true,
			}))
			require.NoError(t, err)
			sameAESKey(t, f, s, key, k)
			require.NoError(t, f.p.DestroyObject(s, k))
		})
	}

	// RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK.
	t.Run("RFC 3394 vector", func(t *testing.T) {
		kekValue, _ := hex.DecodeString("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
		keyValue, _ := hex.DecodeString("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
		want, _ := hex.DecodeString("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")
		got, err := f.raw.WrapKey(sess, pkcs11.CKM_AES_KEY_WRAP, uint(aesKey(t, f, s, kekValue, true)), uint(aesKey(t, f, s, keyValue, false)), 40)
		require.NoError(t, err)
		require.Equal(t, want, got)
	})
}

func TestSingleBadInput(t *testing.T) {
	var nilModule *ckraw.Module
	_, err := nilModule.Encrypt(1, nil, 16)
	require.ErrorIs(t, err, ckraw.ErrClosed)
	_, err = nilModule.Decrypt(1, nil, 16)
	require.ErrorIs(t, err, ckraw.ErrClosed)
	_, err = nilModule.WrapKey(1, pkcs11.CKM_AES_KEY_WRAP, 1, 2, 40)
	require.ErrorIs(t, err, ckraw.ErrClosed)

	f := newFixture(t)
	m, err := ckraw.Open(modulePath, ckraw.Options{})
	require.NoError(t, err)
	require.NoError(t, m.Close())
	_, err = m.Encrypt(1, []byte{1}, 16)
	require.ErrorIs(t, err, ckraw.ErrClosed)
	_, err = m.Decrypt(1, []byte{1}, 16)
	require.ErrorIs(t, err, ckraw.ErrClosed)
	_, err = m.WrapKey(1, pkcs11.CKM_AES_KEY_WRAP, 1, 2, 40)
	require.ErrorIs(t, err, ckraw.ErrClosed)

	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	sess := uint(s)
	key := sessionKey(t, f, s, false)
	pt, nonce := []byte("hello"), randBytes(t, 12)

	t.Run("capacity out of range", func(t *testing.T) {
		gcmInit(t, f, s, key, true, nonce, nil)
		for _, c := range []int{-1, math.MinInt, ckraw.MaxOutput + 1, math.MaxInt} {
			var got []byte
			n := calls(func() { got, err = f.raw.Encrypt(sess, pt, c) })
			require.ErrorIs(t, err, ckraw.ErrInput, "capacity %d", c)
			require.Nil(t, got)
			require.Zero(t, n, "the token is not called")
			_, err = f.raw.Decrypt(sess, pt, c)
			require.ErrorIs(t, err, ckraw.ErrInput)
			_, err = f.raw.WrapKey(sess, pkcs11.CKM_AES_KEY_WRAP, 1, 2, c)
			require.ErrorIs(t, err, ckraw.ErrInput)
		}
		t.Logf("%v", err)
		// The token was not called, so the operation is still active.
		got, err := f.raw.Encrypt(sess, pt, len(pt)+gcmTag)
		require.NoError(t, err)
		require.Len(t, got, len(pt)+gcmTag)
	})

	t.Run("token errors", func(t *testing.T) {
		_, err := f.raw.Encrypt(0xdead, pt, 32)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_SESSION_HANDLE_INVALID))
		_, err = f.raw.Encrypt(sess, pt, 32)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_OPERATION_NOT_INITIALIZED))
		_, err = f.raw.Decrypt(sess, pt, 32)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_OPERATION_NOT_INITIALIZED))
		_, err = f.raw.Decrypt(sess, nil, 0)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_OPERATION_NOT_INITIALIZED))

		_, err = f.raw.WrapKey(sess, pkcs11.CKM_AES_KEY_WRAP, 0xdead, uint(key), 40)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID))
		_, err = f.raw.WrapKey(sess, pkcs11.CKM_AES_KEY_WRAP, uint(key), 0xdead, 40)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_KEY_HANDLE_INVALID))
		_, err = f.raw.WrapKey(sess, 0x7fffffff, uint(key), uint(key), 40)
		require.ErrorIs(t, err, ckr(pkcs11.CKR_MECHANISM_INVALID))
		// A mechanism that needs a parameter gets none.
		_, err = f.raw.WrapKey(sess, pkcs11.CKM_AES_GCM, uint(key), uint(key), 40)
		t.Logf("WrapKey(CKM_AES_GCM): %v", err)
		require.Error(t, err)
		noWrap := aesKey(t, f, s, randBytes(t, 32), false)
		_, err = f.raw.WrapKey(sess, pkcs11.CKM_AES_KEY_WRAP, uint(noWrap), uint(key), 40)
		t.Logf("wrapping key with CKA_WRAP=false: %v", err)
		require.Error(t, err)
	})
}

// TestSingleConcurrent seals and opens on several sessions at once, for the
// race detector.
func TestSingleConcurrent(t *testing.T) {
	f := newFixture(t)
	s := f.session(t)
	f.login(t, s, pkcs11.CKU_USER)
	defer f.logout(t, s)
	key := sessionKey(t, f, s, false) // lives while s is open

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				ss, err := f.p.OpenSession(f.slot, pkcs11.CKF_SERIAL_SESSION)
				if err != nil {
					return err
				}
				defer f.p.CloseSession(ss)
				nonce := make([]byte, 12)
				pt := bytes.Repeat([]byte{byte(g)}, 100*g)
				for i := range 50 {
					binary.BigEndian.PutUint32(nonce, uint32(g))
					binary.BigEndian.PutUint32(nonce[4:], uint32(i))
					params := pkcs11.NewGCMParams(nonce, nil, gcmTag*8)
					mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}
					if err := f.p.EncryptInit(ss, mech, key); err != nil {
						return err
					}
					ct, err := f.raw.Encrypt(uint(ss), pt, len(pt)+gcmTag)
					if err != nil {
						return err
					}
					if err := f.p.DecryptInit(ss, mech, key); err != nil {
						return err
					}
					got, err := f.raw.Decrypt(uint(ss), ct, len(ct))
					params.Free()
					if err != nil {
						return err
					}
					if !bytes.Equal(pt, got) {
						return fmt.Errorf("goroutine %d: round trip %d differs", g, i)
					}
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// BenchmarkSealCalls compares a 1 KiB AES-GCM seal (EncryptInit through
// miekg, then the encryption) with miekg's two C_Encrypt calls and with
// ckraw's one. On a networked HSM every call is a round trip.
func BenchmarkSealCalls(b *testing.B) {
	f := newFixture(b)
	s := f.session(b)
	f.login(b, s, pkcs11.CKU_USER)
	defer f.logout(b, s)
	key := sessionKey(b, f, s, false)
	pt := randBytes(b, 1024)

	run := func(b *testing.B, seal func() ([]byte, error)) {
		b.SetBytes(int64(len(pt)))
		b.ReportAllocs()
		nonce := make([]byte, 12)
		var ctr uint64
		for b.Loop() {
			ctr++
			binary.BigEndian.PutUint64(nonce[4:], ctr)
			params := pkcs11.NewGCMParams(nonce, nil, gcmTag*8)
			if err := f.p.EncryptInit(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, key); err != nil {
				b.Fatal(err)
			}
			out, err := seal()
			params.Free()
			if err != nil || len(out) != len(pt)+gcmTag {
				b.Fatalf("seal: %d bytes, %v", len(out), err)
			}
		}
	}
	b.Run("miekg", func(b *testing.B) {
		run(b, func() ([]byte, error) { return f.p.Encrypt(s, pt) })
	})
	b.Run("ckraw", func(b *testing.B) {
		before := ckraw.OutputCalls()
		run(b, func() ([]byte, error) { return f.raw.Encrypt(uint(s), pt, len(pt)+gcmTag) })
		b.ReportMetric(float64(ckraw.OutputCalls()-before)/float64(b.N), "C_Encrypt/op")
	})
}
