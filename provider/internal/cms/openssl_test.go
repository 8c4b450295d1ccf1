package cms

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hsmkeys/hsmkeys/internal/testopenssl"
	"github.com/stretchr/testify/require"
)

// The OpenSSL tests check interoperability with OpenSSL 3's cms command
// in both directions, once for each openssl that internal/testopenssl
// lists (the system's, and a fixed one where the system's cannot read
// authAttrs). They skip without openssl, except under CI.

var interopSizes = []int{0, 1, 65535, 65536, 65537}

// opensslCmd returns the first (the system's) openssl; it skips t without
// one, except under CI.
func opensslCmd(t testing.TB) string {
	t.Helper()
	return testopenssl.First(t).Path
}

// runOpenSSL runs the first openssl with args.
func runOpenSSL(t testing.TB, args ...string) error {
	t.Helper()
	_, err := testopenssl.First(t).Run(args...)
	return err
}

// opensslDecrypt is opensslDecryptWith the first openssl.
func opensslDecrypt(t testing.TB, blob []byte, args ...string) ([]byte, error) {
	t.Helper()
	return opensslDecryptWith(t, testopenssl.First(t), blob, args...)
}

// opensslEncrypt is opensslEncryptWith the first openssl.
func opensslEncrypt(t testing.TB, plaintext []byte, args ...string) []byte {
	t.Helper()
	return opensslEncryptWith(t, testopenssl.First(t), plaintext, args...)
}

// opensslDecryptWith runs o's cms -decrypt on blob with extra arguments and
// returns the plaintext.
func opensslDecryptWith(t testing.TB, o *testopenssl.OpenSSL, blob []byte, args ...string) ([]byte, error) {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.der"), filepath.Join(dir, "out")
	require.NoError(t, os.WriteFile(in, blob, 0o600))
	args = append([]string{"cms", "-decrypt", "-binary", "-inform", "DER", "-in", in, "-out", out}, args...)
	if _, err := o.Run(args...); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// opensslEncryptWith runs o's cms -encrypt on plaintext with extra
// arguments and returns the output.
func opensslEncryptWith(t testing.TB, o *testopenssl.OpenSSL, plaintext []byte, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	require.NoError(t, os.WriteFile(in, plaintext, 0o600))
	args = append([]string{"cms", "-encrypt", "-binary", "-in", in, "-out", out}, args...)
	_, err := o.Run(args...)
	require.NoError(t, err)
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	return b
}

func secretKeyArgs(kek, id []byte) []string {
	return []string{"-secretkey", hex.EncodeToString(kek), "-secretkeyid", hex.EncodeToString(id)}
}

func TestOpenSSLDecryptsKEK(t *testing.T) {
	testopenssl.Each(t, testOpenSSLDecryptsKEK)
}

func testOpenSSLDecryptsKEK(t *testing.T, o *testopenssl.OpenSSL) {
	id := []byte("hsmkeys-kek-1")
	for _, c := range []struct {
		kekLen int
		alg    []int
	}{{32, OIDAES256GCM}, {16, OIDAES128GCM}, {24, OIDAES256GCM}} {
		kek := randBytes(c.kekLen)
		for _, size := range interopSizes {
			for _, chunk := range []int{0, 4096, 1000} {
				cek := randBytes(cekLen(oidDER(c.alg)))
				h := &Header{
					Recipients: []Recipient{kekRecipient(id, kek, cek, false)},
					Algorithm:  c.alg,
					Nonce:      randBytes(12),
				}
				pt := randBytes(size)
				blob := seal(t, h, cek, pt).encode(t, chunk)
				got, err := opensslDecryptWith(t, o, blob, secretKeyArgs(kek, id)...)
				require.NoError(t, err)
				require.True(t, bytes.Equal(pt, got), "kek %d size %d chunk %d", c.kekLen, size, chunk)
			}
		}
	}
}

func TestOpenSSLEncryptsKEK(t *testing.T) {
	testopenssl.Each(t, testOpenSSLEncryptsKEK)
}

func testOpenSSLEncryptsKEK(t *testing.T, o *testopenssl.OpenSSL) {
	id := []byte{0xca, 0xfe, 0x01}
	for _, c := range []struct {
		kekLen  int
		cipher  string
		alg     []int
		wrapAlg []int
	}{
		{32, "-aes-256-gcm", OIDAES256GCM, OIDAES256Wrap},
		{16, "-aes-128-gcm", OIDAES128GCM, OIDAES128Wrap},
	} {
		kek := randBytes(c.kekLen)
		keys := testKeys{keks: map[string][]byte{string(id): kek}}
		for _, size := range interopSizes {
			for _, form := range []string{"der", "stream", "pem"} {
				if size == 0 && form == "stream" {
					continue // OpenSSL 3.0 fails: "Error writing CMS output"
				}
				pt := randBytes(size)
				args := append([]string{c.cipher}, secretKeyArgs(kek, id)...)
				switch form {
				case "der":
					args = append(args, "-outform", "DER")
				case "stream":
					args = append(args, "-outform", "DER", "-stream")
				case "pem":
					args = append(args, "-outform", "PEM")
				}
				blob := opensslEncryptWith(t, o, pt, args...)
				switch form {
				case "der":
					require.Equal(t, byte(0x30), blob[0])
					require.NotEqual(t, byte(0x80), blob[1], "definite length")
				case "stream":
					require.Equal(t, []byte{0x30, 0x80}, blob[:2], "indefinite length")
				case "pem":
					require.Equal(t, FormatPEM, Sniff(blob))
					var ok bool
					blob, ok = Unarmor(blob)
					require.True(t, ok)
				}
				m, got := keys.open(t, blob)
				require.True(t, bytes.Equal(pt, got), "%s size %d form %s", c.cipher, size, form)
				r := m.Header.Recipients[0].(*KEKRecipient)
				require.Equal(t, id, r.KeyID)
				require.Equal(t, c.wrapAlg, []int(r.WrapAlg))
				require.Equal(t, c.alg, []int(m.Header.Algorithm))
				require.True(t, m.Header.ContentType.Equal(OIDData))
				require.Equal(t, 16, m.Header.ICVLen)
				if form == "der" {
					// OpenSSL's DER is ours byte for byte.
					again, err := Marshal(m.Header, readAll(t, m.Content()), m.MAC)
					require.NoError(t, err)
					require.Equal(t, blob, again)
				}
			}
		}
	}
}

// rsaFixture is an RSA key and self-signed certificate made by OpenSSL.
type rsaFixture struct {
	keyPath, certPath string
	key               *rsa.PrivateKey
	cert              *x509.Certificate
}

var (
	rsaOnce sync.Once
	rsaFix  *rsaFixture
	rsaErr  error
	rsaDir  string
)

func opensslRSA(t *testing.T) *rsaFixture {
	o := testopenssl.First(t)
	rsaOnce.Do(func() {
		rsaDir, rsaErr = os.MkdirTemp("", "cms-openssl-rsa")
		if rsaErr != nil {
			return
		}
		f := &rsaFixture{keyPath: filepath.Join(rsaDir, "key.pem"), certPath: filepath.Join(rsaDir, "cert.pem")}
		if _, rsaErr = o.Run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f.keyPath,
			"-out", f.certPath, "-subj", "/CN=hsmkeys cms test", "-days", "2"); rsaErr != nil {
			return
		}
		var b []byte
		if b, rsaErr = os.ReadFile(f.keyPath); rsaErr != nil {
			return
		}
		blk, _ := pem.Decode(b)
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if rsaErr = err; err != nil {
			return
		}
		f.key = k.(*rsa.PrivateKey)
		if b, rsaErr = os.ReadFile(f.certPath); rsaErr != nil {
			return
		}
		blk, _ = pem.Decode(b)
		if f.cert, rsaErr = x509.ParseCertificate(blk.Bytes); rsaErr != nil {
			return
		}
		rsaFix = f
	})
	require.NoError(t, rsaErr)
	return rsaFix
}

func TestMain(m *testing.M) {
	code := m.Run()
	if rsaDir != "" {
		os.RemoveAll(rsaDir)
	}
	os.Exit(code)
}

func TestOpenSSLSubjectKeyID(t *testing.T) {
	f := opensslRSA(t)
	require.NotEmpty(t, f.cert.SubjectKeyId)
	require.Equal(t, f.cert.SubjectKeyId, SubjectKeyID(&f.key.PublicKey))
}

func TestOpenSSLEncryptsRSA(t *testing.T) {
	testopenssl.Each(t, testOpenSSLEncryptsRSA)
}

func testOpenSSLEncryptsRSA(t *testing.T, o *testopenssl.OpenSSL) {
	f := opensslRSA(t)
	keys := testKeys{rsa: f.key}
	for _, c := range []struct {
		hash crypto.Hash
		opts []string
	}{
		{crypto.SHA1, []string{"-keyopt", "rsa_padding_mode:oaep"}},
		{crypto.SHA256, []string{"-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256", "-keyopt", "rsa_mgf1_md:sha256"}},
	} {
		for _, size := range interopSizes {
			for _, stream := range []bool{false, true} {
				if size == 0 && stream {
					continue // OpenSSL 3.0 fails: "Error writing CMS output"
				}
				pt := randBytes(size)
				args := append([]string{"-aes-256-gcm", "-recip", f.certPath, "-keyid", "-outform", "DER"}, c.opts...)
				if stream {
					args = append(args, "-stream")
				}
				blob := opensslEncryptWith(t, o, pt, args...)
				m, got := keys.open(t, blob)
				require.True(t, bytes.Equal(pt, got), "%v size %d", c.hash, size)
				r := m.Header.Recipients[0].(*KeyTransRecipient)
				require.Equal(t, SubjectKeyID(&f.key.PublicKey), r.SubjectKeyID)
				require.Equal(t, c.hash, r.Hash)
			}
		}
	}
}

func TestOpenSSLDecryptsRSA(t *testing.T) {
	testopenssl.Each(t, testOpenSSLDecryptsRSA)
}

func testOpenSSLDecryptsRSA(t *testing.T, o *testopenssl.OpenSSL) {
	f := opensslRSA(t)
	for _, hash := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		for _, size := range interopSizes {
			for _, chunk := range []int{0, 4096} {
				cek := randBytes(32)
				h := &Header{
					Recipients: []Recipient{rsaRecipient(t, &f.key.PublicKey, hash, cek)},
					Algorithm:  OIDAES256GCM,
					Nonce:      randBytes(12),
				}
				pt := randBytes(size)
				blob := seal(t, h, cek, pt).encode(t, chunk)
				got, err := opensslDecryptWith(t, o, blob, "-inkey", f.keyPath, "-recip", f.certPath)
				require.NoError(t, err)
				require.True(t, bytes.Equal(pt, got), "%v size %d chunk %d", hash, size, chunk)
			}
		}
	}
}

func TestOpenSSLDecryptsSeveralRecipients(t *testing.T) {
	testopenssl.Each(t, testOpenSSLDecryptsSeveralRecipients)
}

func testOpenSSLDecryptsSeveralRecipients(t *testing.T, o *testopenssl.OpenSSL) {
	f := opensslRSA(t)
	kek1, kek2 := randBytes(32), randBytes(16)
	cek := randBytes(32)
	h := &Header{
		Recipients: []Recipient{
			kekRecipient([]byte("one"), kek1, cek, false),
			rsaRecipient(t, &f.key.PublicKey, crypto.SHA256, cek),
			kekRecipient([]byte("two"), kek2, cek, false),
		},
		Algorithm: OIDAES256GCM,
		Nonce:     randBytes(12),
	}
	pt := randBytes(1000)
	for _, chunk := range []int{0, 300} {
		blob := seal(t, h, cek, pt).encode(t, chunk)
		for _, args := range [][]string{
			secretKeyArgs(kek1, []byte("one")),
			secretKeyArgs(kek2, []byte("two")),
			{"-inkey", f.keyPath, "-recip", f.certPath},
		} {
			got, err := opensslDecryptWith(t, o, blob, args...)
			require.NoError(t, err)
			require.Equal(t, pt, got)
		}
	}
}

// TestOpenSSLChecksAuthAttrs shows that OpenSSL feeds authAttrs to GCM as
// RFC 5083 §2.2 says, with a SET OF tag, just as Header.AAD does: our
// message decrypts, and the same message with a tag computed without AAD
// does not. Only an openssl with the fix of openssl#31695 (3.0.22) can;
// older ones refuse every message with authAttrs, which the second half
// records.
func TestOpenSSLChecksAuthAttrs(t *testing.T) {
	testopenssl.Each(t, testOpenSSLChecksAuthAttrs)
}

func testOpenSSLChecksAuthAttrs(t *testing.T, o *testopenssl.OpenSSL) {
	id, kek, cek := []byte("k"), randBytes(32), randBytes(32)
	pt := randBytes(70000)
	ec, err := EncryptionContextAttr(map[string]string{"purpose": "test", "file": "x"})
	require.NoError(t, err)
	for _, ct := range []x509.OID{OIDData, OIDKeyManifest} {
		h := &Header{
			Recipients:  []Recipient{kekRecipient(id, kek, cek, false)},
			ContentType: ct,
			Algorithm:   OIDAES256GCM,
			Nonce:       randBytes(12),
			AuthAttrs:   []Attribute{ContentTypeAttr(ct), ec},
		}
		s := seal(t, h, cek, pt)
		if !o.AuthAttrs {
			// What the probe found, seen on this message: a parse error
			// before any decryption.
			_, err := opensslDecryptWith(t, o, s.encode(t, 0), secretKeyArgs(kek, id)...)
			require.ErrorContains(t, err, "Field=mac, Type=CMS_AuthEnvelopedData", "content type %v", ct)
			o.CanAuthAttrs(t, "a message with authAttrs")
			continue
		}
		for _, chunk := range []int{0, 4096} {
			got, err := opensslDecryptWith(t, o, s.encode(t, chunk), secretKeyArgs(kek, id)...)
			require.NoError(t, err)
			require.Equal(t, pt, got)
		}
		noAAD := *h
		noAAD.AuthAttrs = nil
		s.mac = seal(t, &noAAD, cek, pt).mac
		_, err := opensslDecryptWith(t, o, s.encode(t, 0), secretKeyArgs(kek, id)...)
		require.Error(t, err)
	}
}

// TestOpenSSLWrapPad records that OpenSSL 3.0 cannot unwrap a KEK
// recipient using AES key wrap with padding (RFC 5649): it only knows the
// RFC 3394 OIDs there ("invalid key length"). Our parser accepts both.
func TestOpenSSLWrapPad(t *testing.T) {
	testopenssl.Each(t, testOpenSSLWrapPad)
}

func testOpenSSLWrapPad(t *testing.T, o *testopenssl.OpenSSL) {
	id, kek, cek := []byte("k"), randBytes(32), randBytes(32)
	h := &Header{
		Recipients: []Recipient{kekRecipient(id, kek, cek, true)},
		Algorithm:  OIDAES256GCM,
		Nonce:      randBytes(12),
	}
	blob := seal(t, h, cek, []byte("padded")).encode(t, 0)
	got, err := opensslDecryptWith(t, o, blob, secretKeyArgs(kek, id)...)
	t.Logf("openssl with id-aes256-wrap-pad: plaintext %q, error %v", got, err)
}
