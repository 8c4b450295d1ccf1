package provider

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsmkeys/hsmkeys/internal/testopenssl"
	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// needOpenSSL returns the first (the system's) openssl of
// internal/testopenssl; it skips t without one, except under CI.
func needOpenSSL(t testing.TB) string {
	t.Helper()
	return testopenssl.First(t).Path
}

func openssl(t testing.TB, args ...string) []byte {
	t.Helper()
	out, err := testopenssl.First(t).Run(args...)
	require.NoError(t, err)
	return out
}

// formatKEKs makes one KEK of each kind for the format tests.
type formatKEKs struct {
	aes128, aes256, rsa *KEK
}

func makeFormatKEKs(t *testing.T) formatKEKs {
	a := openAdmin(t)
	f := formatKEKs{
		aes128: makeKEK(t, a, uniqueName(t, "fmt-aes128"), KEKAES128),
		aes256: makeKEK(t, a, uniqueName(t, "fmt-aes256"), KEKAES256),
		rsa:    makeKEK(t, a, uniqueName(t, "fmt-rsa"), KEKRSA2048),
	}
	return f
}

func (f formatKEKs) resolve(t *testing.T, p *Provider) formatKEKs {
	return formatKEKs{mustKEK(t, p, f.aes128), mustKEK(t, p, f.aes256), mustKEK(t, p, f.rsa)}
}

func TestExportImportRoundTrip(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	fk = fk.resolve(t, p)
	for name, to := range map[string][]*KEK{
		"aes128": {fk.aes128}, "aes256": {fk.aes256}, "rsa": {fk.rsa},
		"all three": {fk.aes128, fk.rsa, fk.aes256},
	} {
		t.Run(name, func(t *testing.T) {
			for _, armor := range []bool{false, true} {
				k, err := p.Generate(bg, AES128)
				require.NoError(t, err)
				ectx := map[string]string{"purpose": "test", "tenant": "a"}
				blob, err := p.Export(bg, k, to, Options{Context: ectx, Armor: armor})
				require.NoError(t, err)
				assert.Equal(t, armor, bytes.HasPrefix(blob, []byte("-----BEGIN CMS-----")))

				info, err := Inspect(blob)
				require.NoError(t, err)
				assert.Equal(t, "key", info.Kind)
				assert.Equal(t, AES128, info.Algorithm)
				assert.Equal(t, ectx, info.Context)
				assert.Len(t, info.Recipients, len(to))

				back, err := p.Import(bg, blob, Options{Context: ectx})
				require.NoError(t, err)
				assert.Equal(t, k.ID(), back.ID(), "the manifest carries the key's id")
				assert.Equal(t, k.Created(), back.Created())
				sealed, err := k.Seal(bg, []byte("exported"), nil)
				require.NoError(t, err)
				pt, err := back.Open(bg, sealed, nil)
				require.NoError(t, err)
				assert.Equal(t, "exported", string(pt))

				_, err = p.Import(bg, blob, Options{})
				require.ErrorIs(t, err, ErrContext, "the context must be given")
				_, err = p.Import(bg, blob, Options{Context: map[string]string{"purpose": "test", "tenant": "b"}})
				require.ErrorIs(t, err, ErrContext)
			}
		})
	}
}

func TestRewrapBlob(t *testing.T) {
	a := openAdmin(t)
	name := uniqueName(t, "rewrap")
	v1 := makeKEK(t, a, name, KEKAES256)
	v2 := makeKEK(t, a, name, KEKAES256)
	r := makeKEK(t, a, uniqueName(t, "rewrap-rsa"), KEKRSA2048)
	p := openProvider(t)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	blob, err := p.Export(bg, k, []*KEK{mustKEK(t, p, v1)}, Options{Armor: true})
	require.NoError(t, err)
	re, err := p.Rewrap(bg, blob, []*KEK{mustKEK(t, p, v2), mustKEK(t, p, r)}, Options{})
	require.NoError(t, err)
	assert.True(t, cms.IsArmored(re), "armour follows the input")
	info, err := Inspect(re)
	require.NoError(t, err)
	require.Len(t, info.Recipients, 2)
	ids := [][]byte{info.Recipients[0].KEKID, info.Recipients[1].KEKID}
	assert.Contains(t, ids, v2.ID)
	back, err := p.Import(bg, re, Options{})
	require.NoError(t, err)
	assert.Equal(t, k.ID(), back.ID())
	sealed, err := k.Seal(bg, []byte("same"), nil)
	require.NoError(t, err)
	_, err = back.Open(bg, sealed, nil)
	require.NoError(t, err)
}

func TestImportRejectsBadBlobs(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	fk = fk.resolve(t, p)
	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	blob, err := p.Export(bg, k, []*KEK{fk.aes256}, Options{})
	require.NoError(t, err)
	other, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	otherBlob, err := p.Export(bg, other, []*KEK{fk.aes256}, Options{})
	require.NoError(t, err)

	before, err := p.CountSessionKeys(bg)
	require.NoError(t, err)
	// Every truncation and every bit flip gives a typed error, never a panic.
	for n := 0; n < len(blob); n++ {
		_, err := p.Import(bg, blob[:n], Options{})
		require.Error(t, err, "truncated to %d", n)
		require.True(t, isTyped(err), "truncated to %d: %v", n, err)
	}
	for i := 0; i < len(blob)*8; i++ {
		bad := bytes.Clone(blob)
		bad[i/8] ^= 1 << (i % 8)
		back, err := p.Import(bg, bad, Options{})
		if err == nil {
			// A flip in a part nothing reads (none exists in our DER) would
			// have to give the same key back; it must not give another.
			t.Fatalf("bit %d: a flipped blob imported as %v", i, back)
		}
		require.True(t, isTyped(err), "bit %d: %v", i, err)
	}
	after, err := p.CountSessionKeys(bg)
	require.NoError(t, err)
	assert.Equal(t, before, after, "failed imports leave no session key behind")

	// A wrapped key spliced in from another blob.
	m1, err := cms.Parse(bytes.NewReader(blob), int64(len(blob)))
	require.NoError(t, err)
	m2, err := cms.Parse(bytes.NewReader(otherBlob), int64(len(otherBlob)))
	require.NoError(t, err)
	h := *m1.Header
	h.Recipients = m2.Header.Recipients
	body := make([]byte, m1.ContentLen)
	_, err = io.ReadFull(m1.Content(), body)
	require.NoError(t, err)
	spliced, err := cms.Marshal(&h, body, m1.MAC)
	require.NoError(t, err)
	_, err = p.Import(bg, spliced, Options{})
	require.ErrorIs(t, err, ErrAuthentication)

	// A message is not a key.
	var msg bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &msg, bytes.NewReader([]byte("hi")), 2, []*KEK{fk.aes256}, Options{}))
	_, err = p.Import(bg, msg.Bytes(), Options{})
	require.ErrorIs(t, err, ErrWrongKind)
	// Nor is a key a message, though it is id-data (so that any OpenSSL 3
	// opens it): Decrypt finds the manifest once the content authenticates,
	// and writes nothing.
	var man countingWriter
	require.ErrorIs(t, p.Decrypt(bg, &man, bytes.NewReader(blob), int64(len(blob)), Options{}), ErrWrongKind)
	assert.Zero(t, man.n)

	for name, in := range map[string][]byte{
		"empty":    nil,
		"garbage":  []byte("not a cms message at all"),
		"huge":     make([]byte, MaxBlobSize+1),
		"pem junk": []byte("-----BEGIN CMS-----\n!!!!\n-----END CMS-----\n"),
	} {
		_, err := p.Import(bg, in, Options{})
		require.ErrorIs(t, err, ErrMalformed, name)
	}
	_, err = Inspect([]byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff})
	require.ErrorIs(t, err, ErrMalformed)
}

// isTyped reports whether err carries one of the sentinels a caller of
// Import or Decrypt branches on.
func isTyped(err error) bool {
	for _, s := range []error{ErrMalformed, ErrUnsupported, ErrWrongKind, ErrWrappedKeyInvalid, ErrAuthentication, ErrNotFound, ErrContext, ErrInvalidInput, ErrPolicy} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func TestEncryptDecrypt(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	fk = fk.resolve(t, p)
	sizes := []int{0, 1, 65535, 65536, 65537, 10 << 20}
	for _, size := range sizes {
		msg := make([]byte, size)
		_, _ = rand.Read(msg)
		for _, known := range []bool{true, false} {
			for _, armor := range []bool{false, true} {
				if armor && size > 1<<20 && !known {
					continue
				}
				var out bytes.Buffer
				n := int64(size)
				if !known {
					n = -1
				}
				ectx := map[string]string{"file": "x"}
				require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), n, []*KEK{fk.aes256, fk.rsa}, Options{Context: ectx, Armor: armor}))
				enc := out.Bytes()
				info, err := Inspect(enc)
				require.NoError(t, err)
				assert.Equal(t, "message", info.Kind)
				var got bytes.Buffer
				require.NoError(t, p.Decrypt(bg, &got, bytes.NewReader(enc), int64(len(enc)), Options{Context: ectx}), "size %d known %v armor %v", size, known, armor)
				require.True(t, bytes.Equal(msg, got.Bytes()), "size %d known %v armor %v", size, known, armor)
				require.ErrorIs(t, p.Decrypt(bg, io.Discard, bytes.NewReader(enc), int64(len(enc)), Options{}), ErrContext)
			}
		}
	}
}

func TestDecryptReleasesNoPlaintextOnTamper(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	fk = fk.resolve(t, p)
	for _, size := range []int{1000, 5 << 20} { // one-shot and streaming paths
		msg := bytes.Repeat([]byte("secret plaintext "), size/17+1)[:size]
		var out bytes.Buffer
		require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), int64(size), []*KEK{fk.aes256}, Options{}))
		enc := out.Bytes()
		m, err := cms.Parse(bytes.NewReader(enc), int64(len(enc)))
		require.NoError(t, err)
		// Flip a bit in the ciphertext, near the start and at the end, and
		// one in the tag.
		var offs []int64
		for r := range m.ContentRanges() {
			offs = append(offs, r.Off, r.Off+r.Len-1)
		}
		offs = append(offs, int64(len(enc)-1))
		for _, off := range offs {
			bad := bytes.Clone(enc)
			bad[off] ^= 0x01
			var got countingWriter
			err := p.Decrypt(bg, &got, bytes.NewReader(bad), int64(len(bad)), Options{})
			require.ErrorIs(t, err, ErrAuthentication, "size %d offset %d", size, off)
			assert.Zero(t, got.n, "no plaintext released (size %d offset %d)", size, off)
		}
	}
}

type countingWriter struct{ n int }

func (w *countingWriter) Write(b []byte) (int, error) { w.n += len(b); return len(b), nil }

// legacyExport writes k as Export did before manifest version 2: content
// type OIDKeyManifest, authAttrs always (the content-type attribute, and
// the context), a version 1 manifest. The sealing runs on the token, as
// Export's did; the test only lays out the bytes.
func legacyExport(t *testing.T, p *Provider, k *Key, to []*KEK, ectx map[string]string) []byte {
	t.Helper()
	var der []byte
	require.NoError(t, k.use(bg, "legacy export", func(s *p11.Session) error {
		kcv, err := p.pool.KCV(s, k.obj)
		if err != nil {
			return err
		}
		manifest, err := cms.MarshalManifest(&cms.Manifest{
			Version: cms.ManifestVersionLegacy, KeyAlg: k.alg.String(), KeyBits: k.alg.bytes() * 8,
			KCV: kcv, Created: k.created, Policy: cms.PolicyTrusted, KeyID: k.id[:],
		})
		if err != nil {
			return err
		}
		h := &cms.Header{ContentType: cms.OIDKeyManifest, Algorithm: gcmOID(k.alg), Nonce: make([]byte, p11.NonceSize)}
		if h.AuthAttrs, err = authAttrs(cms.ContentTypeAttr(cms.OIDKeyManifest), ectx, true); err != nil {
			return err
		}
		for _, kek := range to {
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return err
			}
			h.Recipients = append(h.Recipients, r)
		}
		if _, err := rand.Read(h.Nonce); err != nil {
			return err
		}
		sealed, err := p.pool.SealGCM(s, k.obj, h.Nonce, h.AAD(), manifest)
		if err != nil {
			return err
		}
		der, err = cms.Marshal(h, sealed[:len(sealed)-p11.TagSize], sealed[len(sealed)-p11.TagSize:])
		return err
	}))
	return der
}

// TestImportLegacyForm: keys exported before manifest version 2 (content
// type OIDKeyManifest with authAttrs) still import, rewrap and inspect as
// keys; the new form has id-data and no authAttrs without a context.
func TestImportLegacyForm(t *testing.T) {
	fk := makeFormatKEKs(t)
	p := openProvider(t)
	fk = fk.resolve(t, p)
	for _, ectx := range []map[string]string{nil, {"tenant": "a"}} {
		k, err := p.Generate(bg, AES256)
		require.NoError(t, err)
		old := legacyExport(t, p, k, []*KEK{fk.aes256, fk.rsa}, ectx)
		m, err := cms.Parse(bytes.NewReader(old), int64(len(old)))
		require.NoError(t, err)
		require.True(t, m.Header.ContentType.Equal(cms.OIDKeyManifest))
		require.NotEmpty(t, m.Header.AuthAttrs)

		info, err := Inspect(old)
		require.NoError(t, err)
		assert.Equal(t, "key", info.Kind)
		back, err := p.Import(bg, old, Options{Context: ectx})
		require.NoError(t, err, "a legacy blob imports")
		assert.Equal(t, k.ID(), back.ID())
		assert.Equal(t, k.Created(), back.Created())
		sealed, err := k.Seal(bg, []byte("legacy"), nil)
		require.NoError(t, err)
		_, err = back.Open(bg, sealed, nil)
		require.NoError(t, err, "the same key")
		// Rewrap writes it in the current form, the same key.
		re, err := p.Rewrap(bg, old, []*KEK{fk.aes128}, Options{Context: ectx})
		require.NoError(t, err)
		rm, err := cms.Parse(bytes.NewReader(re), int64(len(re)))
		require.NoError(t, err)
		assert.True(t, rm.Header.ContentType.Equal(cms.OIDData), "rewrap moves a legacy key to id-data")
		assert.Equal(t, len(ectx) > 0, len(rm.Header.AuthAttrs) > 0)
		back, err = p.Import(bg, re, Options{Context: ectx})
		require.NoError(t, err)
		assert.Equal(t, k.ID(), back.ID())
		assert.Equal(t, k.Created(), back.Created())
		require.ErrorIs(t, p.Decrypt(bg, io.Discard, bytes.NewReader(old), int64(len(old)), Options{Context: ectx}), ErrWrongKind,
			"a legacy key is no message")

		blob, err := p.Export(bg, k, []*KEK{fk.aes256}, Options{Context: ectx})
		require.NoError(t, err)
		m, err = cms.Parse(bytes.NewReader(blob), int64(len(blob)))
		require.NoError(t, err)
		assert.True(t, m.Header.ContentType.Equal(cms.OIDData), "new keys are id-data")
		assert.Equal(t, len(ectx) > 0, len(m.Header.AuthAttrs) > 0, "authAttrs only with a context")
	}
}

// TestOpenSSLInterop runs openssl cms on our output and our Decrypt and
// Import on openssl's, once per openssl that internal/testopenssl lists
// (the system's first, then a fixed one where the system's cannot read
// authAttrs): with an AES KEK whose value the test chose and imported, and
// an RSA recipient whose private key openssl holds. Messages and exported
// keys without a context must open in every OpenSSL 3; with a context
// (authAttrs) only in one with the fix of openssl#31695, and the test logs
// the cases it does not run elsewhere.
func TestOpenSSLInterop(t *testing.T) {
	sys := testopenssl.First(t)
	dir := t.TempDir()
	a := openAdmin(t)
	kekValue := make([]byte, 32)
	_, _ = rand.Read(kekValue)
	kekFile := filepath.Join(dir, "kek")
	require.NoError(t, os.WriteFile(kekFile, kekValue, 0o600))
	aesKEK, err := a.ImportKEKWith(bg, uniqueName(t, "interop"), kekFile, KEKOptions{AllowExposedAtRest: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, aesKEK.ID) })

	// openssl holds this RSA key; the token gets its public half.
	keyPEM := filepath.Join(dir, "key.pem")
	certPEM := filepath.Join(dir, "cert.pem")
	_, err = sys.Run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyPEM, "-out", certPEM, "-subj", "/CN=interop", "-days", "1")
	require.NoError(t, err)
	cert := readCert(t, certPEM)
	partner, err := a.ImportPublicKEK(bg, uniqueName(t, "interop-partner"), cert.PublicKey.(*rsa.PublicKey))
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, partner.ID) })
	// An RSA KEK on the token, for openssl to encrypt to: its certificate
	// is made here, signed by a throw-away CA (openssl does not verify it).
	tokenRSA := makeKEK(t, a, uniqueName(t, "interop-rsa"), KEKRSA2048)
	tokenCert := filepath.Join(dir, "token-cert.pem")
	writeCertFor(t, tokenCert, tokenRSA.PublicKey())

	p := openProvider(t)
	aesKEK, partner, tokenRSA = mustKEK(t, p, aesKEK), mustKEK(t, p, partner), mustKEK(t, p, tokenRSA)
	secretKey, secretID := hex.EncodeToString(kekValue), hex.EncodeToString(aesKEK.ID)
	opensslOpens := func(o *testopenssl.OpenSSL, in string, how []string) []byte {
		t.Helper()
		dec := filepath.Join(dir, "dec")
		_, err := o.Run(append([]string{"cms", "-decrypt", "-binary", "-inform", "DER", "-in", in, "-out", dec}, how...)...)
		require.NoError(t, err)
		got, err := os.ReadFile(dec)
		require.NoError(t, err)
		return got
	}
	withAES := []string{"-secretkey", secretKey, "-secretkeyid", secretID}
	withRSA := []string{"-inkey", keyPEM, "-recip", certPEM}
	ectx := map[string]string{"tenant": "a", "file": "interop"}

	testopenssl.Each(t, func(t *testing.T, o *testopenssl.OpenSSL) {
		for _, size := range []int{0, 1, 65535, 65536, 65537, 10 << 20} {
			msg := make([]byte, size)
			_, _ = rand.Read(msg)
			plain := filepath.Join(dir, "plain")
			require.NoError(t, os.WriteFile(plain, msg, 0o600))

			// Ours, opened by openssl: with the AES KEK value, and with the
			// RSA key; with a context only where openssl reads authAttrs.
			for _, c := range []map[string]string{nil, ectx} {
				if c != nil && !o.CanAuthAttrs(t, fmt.Sprintf("a %d-byte message with a context", size)) {
					continue
				}
				var out bytes.Buffer
				require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), int64(size), []*KEK{aesKEK, partner}, Options{Context: c}))
				ours := filepath.Join(dir, "ours.der")
				require.NoError(t, os.WriteFile(ours, out.Bytes(), 0o600))
				for _, how := range [][]string{withAES, withRSA} {
					got := opensslOpens(o, ours, how)
					require.True(t, bytes.Equal(msg, got), "openssl %v on %d bytes, context %v", how[0], size, c)
				}
			}

			// openssl's, opened by us: DER and streamed BER, to the AES KEK and
			// to the token's RSA KEK.
			for _, extra := range [][]string{
				{"-secretkey", secretKey, "-secretkeyid", secretID, "-binary", "-outform", "DER"},
				{"-secretkey", secretKey, "-secretkeyid", secretID, "-binary", "-outform", "DER", "-stream"},
				{"-secretkey", secretKey, "-secretkeyid", secretID, "-binary", "-outform", "PEM"},
				{"-recip", tokenCert, "-keyid", "-keyopt", "rsa_padding_mode:oaep", "-binary", "-outform", "DER"},
				// A recipient we cannot use (issuer and serial) beside one we can.
				{"-recip", certPEM, "-secretkey", secretKey, "-secretkeyid", secretID, "-binary", "-outform", "DER"},
			} {
				if size == 0 && extra[len(extra)-1] == "-stream" {
					continue // openssl 3.0 cannot stream an empty input
				}
				theirs := filepath.Join(dir, "theirs")
				_, err := o.Run(append([]string{"cms", "-encrypt", "-aes-256-gcm", "-in", plain, "-out", theirs}, extra...)...)
				require.NoError(t, err)
				f, err := os.Open(theirs)
				require.NoError(t, err)
				st, err := f.Stat()
				require.NoError(t, err)
				var got bytes.Buffer
				err = p.Decrypt(bg, &got, f, st.Size(), Options{})
				f.Close()
				require.NoError(t, err, "openssl %v, %d bytes", extra, size)
				require.True(t, bytes.Equal(msg, got.Bytes()), "openssl %v, %d bytes", extra, size)
			}
		}

		// An exported key opens in openssl too: its content is the manifest.
		// Without a context it has no authAttrs, so every OpenSSL 3 can.
		for _, c := range []map[string]string{nil, ectx} {
			if c != nil && !o.CanAuthAttrs(t, "an exported key with a context") {
				continue
			}
			k, err := p.Generate(bg, AES256)
			require.NoError(t, err)
			blob, err := p.Export(bg, k, []*KEK{aesKEK, partner}, Options{Context: c})
			require.NoError(t, err)
			bf := filepath.Join(dir, "key.der")
			require.NoError(t, os.WriteFile(bf, blob, 0o600))
			for _, how := range [][]string{withAES, withRSA} {
				man, err := cms.ParseManifest(opensslOpens(o, bf, how))
				require.NoError(t, err)
				id := k.ID()
				assert.Equal(t, id[:], man.KeyID, "openssl %v, context %v", how[0], c)
				assert.Equal(t, "aes256", man.KeyAlg)
			}
		}
	})
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(b)
	require.NotNil(t, blk)
	c, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	return c
}

// writeCertFor writes a certificate for pub, with the subject key identifier
// openssl computes (RFC 5280 method 1), signed by a throw-away CA.
func writeCertFor(t testing.TB, path string, pub *rsa.PublicKey) {
	t.Helper()
	ca, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "token kek"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, SubjectKeyId: cms.SubjectKeyID(pub),
	}
	parent := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "throw-away ca"},
		NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter, IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, ca)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
}

func TestChunkSizes(t *testing.T) {
	fk := makeFormatKEKs(t)
	for _, size := range []int{4 << 10, 1 << 20} {
		p := openProvider(t, func(c *Config) { c.ChunkSize = size })
		kek := mustKEK(t, p, fk.aes256)
		msg := make([]byte, 5<<20+3)
		_, _ = rand.Read(msg)
		var out, got bytes.Buffer
		require.NoError(t, p.Encrypt(bg, &out, bytes.NewReader(msg), -1, []*KEK{kek}, Options{}))
		require.NoError(t, p.Decrypt(bg, &got, bytes.NewReader(out.Bytes()), int64(out.Len()), Options{}))
		require.True(t, bytes.Equal(msg, got.Bytes()), "chunk size %d", size)
		require.NoError(t, p.Close())
	}
	for _, bad := range []int{-1, 100, 32 << 20} {
		_, err := Open(bg, Config{Module: tok.module, TokenLabel: tok.label, PIN: PINValue([]byte(tok.userPIN)), ChunkSize: bad})
		require.ErrorIs(t, err, ErrConfig, "chunk size %d", bad)
	}
}

// TestOpenSSLTable measures, for every openssl that internal/testopenssl
// lists, what it opens of ours and whether we open its output, and prints
// the table docs/format.md shows. It runs only when HSMKEYS_OPENSSL_TABLE
// is set (scripts/openssl-table.sh sets it, with every Debian build apt
// offers), and checks what the format promises: everything without
// authAttrs opens in every OpenSSL 3, the rest exactly where the probe
// found the fix.
func TestOpenSSLTable(t *testing.T) {
	if os.Getenv("HSMKEYS_OPENSSL_TABLE") == "" {
		t.Skip("set HSMKEYS_OPENSSL_TABLE (scripts/openssl-table.sh) to measure the table")
	}
	all := testopenssl.All(t)
	dir := t.TempDir()
	a := openAdmin(t)
	kekValue := make([]byte, 32)
	_, _ = rand.Read(kekValue)
	kekFile := filepath.Join(dir, "kek")
	require.NoError(t, os.WriteFile(kekFile, kekValue, 0o600))
	aesKEK, err := a.ImportKEK(bg, uniqueName(t, "table"), kekFile)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.DestroyKEK(bg, aesKEK.ID) })
	p := openProvider(t)
	aesKEK = mustKEK(t, p, aesKEK)
	how := []string{"-secretkey", hex.EncodeToString(kekValue), "-secretkeyid", hex.EncodeToString(aesKEK.ID)}
	ectx := map[string]string{"tenant": "a"}

	k, err := p.Generate(bg, AES256)
	require.NoError(t, err)
	var msg, msgCtx bytes.Buffer
	require.NoError(t, p.Encrypt(bg, &msg, bytes.NewReader([]byte("table")), 5, []*KEK{aesKEK}, Options{}))
	require.NoError(t, p.Encrypt(bg, &msgCtx, bytes.NewReader([]byte("table")), 5, []*KEK{aesKEK}, Options{Context: ectx}))
	keyBlob, err := p.Export(bg, k, []*KEK{aesKEK}, Options{})
	require.NoError(t, err)
	keyCtx, err := p.Export(bg, k, []*KEK{aesKEK}, Options{Context: ectx})
	require.NoError(t, err)
	cases := []struct {
		name      string
		blob      []byte
		authAttrs bool
	}{
		{"exported key", keyBlob, false},
		{"exported key with context", keyCtx, true},
		{"message", msg.Bytes(), false},
		{"message with context", msgCtx.Bytes(), true},
		{"exported key, before version 2", legacyExport(t, p, k, []*KEK{aesKEK}, nil), true},
	}
	var tab strings.Builder
	tab.WriteString("| OpenSSL |")
	for _, c := range cases {
		tab.WriteString(" " + c.name + " |")
	}
	tab.WriteString(" openssl → hsmkeys |\n|---|")
	for range cases {
		tab.WriteString("---|")
	}
	tab.WriteString("---|\n")
	for _, o := range all {
		fmt.Fprintf(&tab, "| %s |", o.Name())
		for _, c := range cases {
			in := filepath.Join(dir, "in.der")
			require.NoError(t, os.WriteFile(in, c.blob, 0o600))
			_, err := o.Run(append([]string{"cms", "-decrypt", "-binary", "-inform", "DER", "-in", in, "-out", filepath.Join(dir, "out")}, how...)...)
			if err == nil {
				tab.WriteString(" opens |")
			} else {
				tab.WriteString(" fails |")
			}
			assert.Equal(t, !c.authAttrs || o.AuthAttrs, err == nil, "%s: %s: %v", o.Version, c.name, err)
		}
		plain := filepath.Join(dir, "plain")
		require.NoError(t, os.WriteFile(plain, []byte("from openssl"), 0o600))
		theirs := filepath.Join(dir, "theirs")
		_, err := o.Run(append([]string{"cms", "-encrypt", "-aes-256-gcm", "-binary", "-outform", "DER", "-in", plain, "-out", theirs}, how...)...)
		require.NoError(t, err)
		b, err := os.ReadFile(theirs)
		require.NoError(t, err)
		var got bytes.Buffer
		if err := p.Decrypt(bg, &got, bytes.NewReader(b), int64(len(b)), Options{}); err == nil && got.String() == "from openssl" {
			tab.WriteString(" opens |\n")
		} else {
			tab.WriteString(" fails |\n")
			t.Errorf("%s: our Decrypt of its message: %v", o.Version, err)
		}
	}
	t.Logf("measured with %s:\n%s", os.Getenv(testopenssl.Env), tab.String())
	fmt.Print(tab.String())
}
