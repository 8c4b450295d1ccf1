package cms

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// The tests stand in for the HSM: they wrap keys (RFC 3394, RFC 5649) and
// run AES-GCM in Go.

var (
	wrapIV    = []byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6}
	wrapPadIV = []byte{0xa6, 0x59, 0x59, 0xa6}
)

// aesWrap is the RFC 3394 §2.2.1 key wrap with initial value iv.
func aesWrap(kek, key, iv []byte) []byte {
	block, err := aes.NewCipher(kek)
	if err != nil {
		panic(err)
	}
	n := len(key) / 8
	if len(key)%8 != 0 || n < 1 {
		panic("aesWrap: bad key length")
	}
	r := make([]byte, 8+len(key))
	copy(r[8:], key)
	a := bytes.Clone(iv)
	var b [16]byte
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(b[:8], a)
			copy(b[8:], r[8*i:8*i+8])
			block.Encrypt(b[:], b[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a, binary.BigEndian.Uint64(b[:8])^t)
			copy(r[8*i:], b[8:])
		}
	}
	copy(r, a)
	return r
}

// aesUnwrapRaw inverts aesWrap and returns the initial value and the key.
func aesUnwrapRaw(kek, c []byte) (iv, key []byte) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		panic(err)
	}
	n := len(c)/8 - 1
	r := bytes.Clone(c)
	a := bytes.Clone(c[:8])
	var b [16]byte
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(a)^t)
			copy(b[8:], r[8*i:8*i+8])
			block.Decrypt(b[:], b[:])
			copy(a, b[:8])
			copy(r[8*i:], b[8:])
		}
	}
	return a, r[8:]
}

func aesUnwrap(kek, c []byte) ([]byte, error) {
	if len(c)%8 != 0 || len(c) < 24 {
		return nil, errors.New("bad wrapped key length")
	}
	iv, key := aesUnwrapRaw(kek, c)
	if !bytes.Equal(iv, wrapIV) {
		return nil, errors.New("key unwrap integrity check failed")
	}
	return key, nil
}

// aesWrapPad is the RFC 5649 §4.1 key wrap with padding.
func aesWrapPad(kek, key []byte) []byte {
	aiv := binary.BigEndian.AppendUint32(bytes.Clone(wrapPadIV), uint32(len(key)))
	padded := make([]byte, (len(key)+7)/8*8)
	copy(padded, key)
	if len(padded) == 8 {
		block, _ := aes.NewCipher(kek)
		out := append(aiv, padded...)
		block.Encrypt(out, out)
		return out
	}
	return aesWrap(kek, padded, aiv)
}

func aesUnwrapPad(kek, c []byte) ([]byte, error) {
	if len(c)%8 != 0 || len(c) < 24 {
		return nil, errors.New("bad wrapped key length") // no 8-byte CEKs here
	}
	aiv, p := aesUnwrapRaw(kek, c)
	if !bytes.Equal(aiv[:4], wrapPadIV) {
		return nil, errors.New("key unwrap integrity check failed")
	}
	mli := int(binary.BigEndian.Uint32(aiv[4:]))
	if mli > len(p) || mli <= len(p)-8 || !allZero(p[mli:]) {
		return nil, errors.New("key unwrap integrity check failed")
	}
	return p[:mli], nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func TestAESWrapRFC3394Vector(t *testing.T) {
	// RFC 3394 §4.6: 256-bit KEK, 256-bit key.
	kek := unhex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
	key := unhex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
	want := unhex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")
	require.Equal(t, want, aesWrap(kek, key, wrapIV))
	got, err := aesUnwrap(kek, want)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

func TestAESWrapPadRFC5649Vector(t *testing.T) {
	// RFC 5649 §6, 20-octet key.
	kek := unhex("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	key := unhex("c37b7e6492584340bed12207808941155068f738")
	want := unhex("138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a")
	require.Equal(t, want, aesWrapPad(kek, key))
	got, err := aesUnwrapPad(kek, want)
	require.NoError(t, err)
	require.Equal(t, key, got)
}

func unhex(s string) []byte {
	var b []byte
	_, err := fmt.Sscanf(s, "%x", &b)
	if err != nil {
		panic(err)
	}
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// sealed is a message encrypted by the test in place of the HSM.
type sealed struct {
	h          *Header
	ciphertext []byte
	mac        []byte
}

// seal encrypts plaintext under cek for h, whose AAD it uses.
func seal(t testing.TB, h *Header, cek, plaintext []byte) sealed {
	t.Helper()
	block, err := aes.NewCipher(cek)
	require.NoError(t, err)
	gcm, err := cipher.NewGCMWithTagSize(block, h.icvLen())
	require.NoError(t, err)
	out := gcmSeal(gcm, h.Nonce, plaintext, h.AAD())
	n := len(plaintext)
	return sealed{h: h, ciphertext: out[:n], mac: out[n:]}
}

// gcmSeal is g.Seal into a buffer of its own with sealSlack bytes to
// spare. Go 1.26's amd64 and arm64 AES-GCM assembly writes the last
// partial block as 16 bytes whatever the tag size (golang/go#80288), so
// with a 12- to 14-byte tag it writes up to 4 zero bytes past the slice
// Seal returns: with dst nil that is past the allocation. Under -race the
// allocator puts small objects flush against the next one, and this
// package's tests (icv12, icv13) zeroed the first bytes of package-level
// DER values: the "unsupported key wrap algorithm" CI failure of FuzzParse.
func gcmSeal(g cipher.AEAD, nonce, plaintext, aad []byte) []byte {
	n := len(plaintext) + g.Overhead()
	out := g.Seal(make([]byte, 0, n+sealSlack), nonce, plaintext, aad)
	return out[:n:n]
}

// sealSlack is what gcmSeal leaves past the output for the assembly to
// write into: the largest overrun, 16 minus the smallest tag Go allows (12).
const sealSlack = 4

// encode writes s in the definite form (chunk == 0) or the indefinite form
// with chunks of the given size.
func (s sealed) encode(t testing.TB, chunk int) []byte {
	t.Helper()
	var buf bytes.Buffer
	n := int64(len(s.ciphertext))
	if chunk < 0 {
		chunk = 0
	}
	if chunk > 0 {
		n = -1
	}
	require.NoError(t, WriteHeader(&buf, s.h, n))
	if chunk == 0 {
		buf.Write(s.ciphertext)
	} else {
		for c := s.ciphertext; len(c) > 0; {
			k := min(chunk, len(c))
			require.NoError(t, WriteChunk(&buf, c[:k]))
			c = c[k:]
		}
	}
	require.NoError(t, WriteTrailer(&buf, s.h, n, s.mac))
	return buf.Bytes()
}

// keys the test holds to open messages.
type testKeys struct {
	keks map[string][]byte // by key ID
	rsa  *rsa.PrivateKey
}

// open parses and decrypts a message with the first recipient keys can
// open.
func (k testKeys) open(t testing.TB, blob []byte) (*Message, []byte) {
	t.Helper()
	m, err := Parse(bytes.NewReader(blob), int64(len(blob)))
	require.NoError(t, err)
	var cek []byte
	for _, r := range m.Header.Recipients {
		switch r := r.(type) {
		case *KEKRecipient:
			kek, ok := k.keks[string(r.KeyID)]
			if !ok {
				continue
			}
			if r.WrapAlg.Equal(OIDAES128WrapPad) || r.WrapAlg.Equal(OIDAES192WrapPad) || r.WrapAlg.Equal(OIDAES256WrapPad) {
				cek, err = aesUnwrapPad(kek, r.EncryptedKey)
			} else {
				cek, err = aesUnwrap(kek, r.EncryptedKey)
			}
			require.NoError(t, err)
		case *KeyTransRecipient:
			if k.rsa == nil || !bytes.Equal(r.SubjectKeyID, SubjectKeyID(&k.rsa.PublicKey)) {
				continue
			}
			h := sha1.New()
			if r.Hash.String() == "SHA-256" {
				h = sha256.New()
			}
			cek, err = rsa.DecryptOAEP(h, nil, k.rsa, r.EncryptedKey, nil)
			require.NoError(t, err)
		}
		if cek != nil {
			break
		}
	}
	require.NotNil(t, cek, "no recipient matches the test keys")
	var ct bytes.Buffer
	_, err = ct.ReadFrom(m.Content())
	require.NoError(t, err)
	require.EqualValues(t, m.ContentLen, ct.Len())
	pt, err := gcmOpen(cek, m.Header, ct.Bytes(), m.MAC)
	require.NoError(t, err)
	return m, pt
}

// gcmOpen decrypts ciphertext and checks mac as the HSM would.
func gcmOpen(cek []byte, h *Header, ciphertext, mac []byte) ([]byte, error) {
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCMWithTagSize(block, h.ICVLen)
	if err != nil {
		return nil, err
	}
	return gcm.Open(nil, h.Nonce, append(bytes.Clone(ciphertext), mac...), h.AAD())
}

// kekRecipient wraps cek under kek with alg.
func kekRecipient(id, kek, cek []byte, pad bool) *KEKRecipient {
	r := &KEKRecipient{KeyID: id}
	if pad {
		r.EncryptedKey = aesWrapPad(kek, cek)
		r.WrapAlg = slices.Clone(map[int][]int{16: OIDAES128WrapPad, 24: OIDAES192WrapPad, 32: OIDAES256WrapPad}[len(kek)])
	} else {
		r.EncryptedKey = aesWrap(kek, cek, wrapIV)
		r.WrapAlg = slices.Clone(map[int][]int{16: OIDAES128Wrap, 24: OIDAES192Wrap, 32: OIDAES256Wrap}[len(kek)])
	}
	return r
}
