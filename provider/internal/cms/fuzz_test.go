package cms

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func checkSentinel(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
		t.Fatalf("error wraps no sentinel: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	// The table every seed's recipient is checked against, as RFC 3565
	// and RFC 5649 give it: a CI run once refused the AES-128 KWP seed
	// after Go's GCM assembly overran into it (see gcmSeal).
	checkWrapAlgTable(f)
	// The committed corpus in testdata/fuzz/FuzzParse holds OpenSSL's and
	// our messages of every form; these add one of each made now.
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	// The costly shapes of issue 12 at sizes mutation can work on;
	// FuzzParseShapes takes them to MiB sizes.
	f.Add(manyAttrsMessage(f, maxAttrs))
	f.Add(manyAttrsMessage(f, maxAttrs+1))
	f.Add(piecesMessage(f, 4096, 1))
	f.Add(hugeArcRecipientMessage(f, 1000))
	f.Add(hugeArcAttrMessage(f, 21))
	f.Add(deepMessage(f, 100))
	f.Add(manyRecipientsMessage(f, maxRecipients))
	f.Fuzz(func(t *testing.T, b []byte) {
		cr := &countingReaderAt{r: bytes.NewReader(b)}
		m, err := Parse(cr, int64(len(b)))
		if err != nil {
			checkSentinel(t, err)
			checkReads(t, cr, len(b))
			return
		}
		ct, err := io.ReadAll(m.Content())
		if err != nil {
			t.Fatalf("content of a parsed message: %v", err)
		}
		checkReads(t, cr, len(b))
		if int64(len(ct)) != m.ContentLen {
			t.Fatalf("content is %d bytes, ContentLen %d", len(ct), m.ContentLen)
		}
		var total int64
		var fromRanges []byte
		for r, err := range m.ContentRanges() {
			if err != nil {
				t.Fatal(err)
			}
			if r.Len <= 0 || r.Off < 0 || r.Off+r.Len > int64(len(b)) {
				t.Fatalf("bad range %+v", r)
			}
			total += r.Len
			fromRanges = append(fromRanges, b[r.Off:r.Off+r.Len]...)
		}
		if total != m.ContentLen {
			t.Fatalf("ranges add up to %d, ContentLen %d", total, m.ContentLen)
		}
		// Content's fast path over small pieces reads what the ranges,
		// found by the general loop, say.
		if !bytes.Equal(fromRanges, ct) {
			t.Fatal("content differs from the bytes of its ranges")
		}
		if m.RawAuthAttrs != nil && !bytes.Equal(m.RawAuthAttrs[1:], m.Header.AAD()[1:]) {
			t.Fatal("AAD differs from the authAttrs in the input")
		}
		if ec, err := m.Header.EncryptionContext(); err != nil {
			checkSentinel(t, err)
		} else if ec != nil {
			a, err := EncryptionContextAttr(ec)
			require.NoError(t, err)
			got, _ := FindAttr(m.Header.AuthAttrs, OIDEncryptionContext)
			require.Equal(t, got, a)
		}
		// Whatever parses re-encodes, and the DER is stable.
		out, err := Marshal(m.Header, ct, m.MAC)
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		m2, err := Parse(bytes.NewReader(out), int64(len(out)))
		if err != nil {
			t.Fatalf("parse of re-marshal: %v", err)
		}
		out2, err := Marshal(m2.Header, readAll(t, m2.Content()), m2.MAC)
		if err != nil || !bytes.Equal(out, out2) {
			t.Fatalf("re-marshal unstable: %v", err)
		}
		// The indefinite form parses to the same header.
		var ber bytes.Buffer
		require.NoError(t, WriteHeader(&ber, m.Header, -1))
		require.NoError(t, WriteChunk(&ber, ct))
		require.NoError(t, WriteTrailer(&ber, m.Header, -1, m.MAC))
		m3, err := Parse(bytes.NewReader(ber.Bytes()), int64(ber.Len()))
		if err != nil {
			t.Fatalf("parse of BER re-encoding: %v", err)
		}
		out3, err := Marshal(m3.Header, readAll(t, m3.Content()), m3.MAC)
		if err != nil || !bytes.Equal(out, out3) {
			t.Fatalf("BER re-encoding differs: %v", err)
		}
	})
}

// checkReads fails if parsing and one pass over the content made more
// ReadAt calls than a constant per message plus one per window of input
// (issue 12: one per content segment per pass).
func checkReads(t *testing.T, cr *countingReaderAt, size int) {
	t.Helper()
	if max := int64(64 + 4*size/windowSize); cr.calls.Load() > max {
		t.Fatalf("%d ReadAt calls for %d bytes (at most %d)", cr.calls.Load(), size, max)
	}
}

// FuzzParseShapes builds messages of the shapes that cost the most per
// byte (issue 12), at sizes up to a few MiB that mutating FuzzParse's
// inputs does not reach, changes up to 16 bytes of each (tail XORed in
// from offset at), and checks that each is parsed or refused with a typed
// error, with reads and attribute comparisons bounded by its size.
func FuzzParseShapes(f *testing.F) {
	f.Add(uint8(0), uint32(88000), uint32(0), uint32(0), []byte{})    // attributes in 1 MiB
	f.Add(uint8(0), uint32(maxAttrs), uint32(0), uint32(0), []byte{}) // as many as allowed
	f.Add(uint8(1), uint32(900<<10), uint32(0), uint32(0), []byte{})  // OID arc in an attribute type
	f.Add(uint8(2), uint32(900<<10), uint32(0), uint32(0), []byte{})  // OID arc in a recipient
	f.Add(uint8(3), uint32(1<<20), uint32(1), uint32(0), []byte{})    // 1-byte content pieces
	f.Add(uint8(3), uint32(1<<20), uint32(4095), uint32(0), []byte{})
	f.Add(uint8(4), uint32(1<<19), uint32(0), uint32(0), []byte{})      // nesting
	f.Add(uint8(5), uint32(150000), uint32(0), uint32(0), []byte{})     // recipients
	f.Add(uint8(3), uint32(100000), uint32(1), uint32(5000), []byte{4}) // a piece header changed
	f.Fuzz(func(t *testing.T, shape uint8, n, m, at uint32, tail []byte) {
		var in []byte
		switch shape % 6 {
		case 0:
			in = manyAttrsMessage(t, 1+int(n%100000))
		case 1:
			in = hugeArcAttrMessage(t, 1+int(n%(1<<20)))
		case 2:
			in = hugeArcRecipientMessage(t, 1+int(n%(1<<20)))
		case 3:
			in = piecesMessage(t, int(n%(2<<20)), 1+int(m%(64<<10)))
		case 4:
			in = deepMessage(t, int(n%(1<<19)))
		case 5:
			in = manyRecipientsMessage(t, 1+int(n%150000))
		}
		for i, c := range tail[:min(len(tail), 16)] {
			in[(int(at)+i)%len(in)] ^= c
		}
		var compares atomic.Int64
		compareAttr = func(a, b []byte) int { compares.Add(1); return bytes.Compare(a, b) }
		defer func() { compareAttr = bytes.Compare }()
		cr := &countingReaderAt{r: bytes.NewReader(in)}
		msg, err := Parse(cr, int64(len(in)))
		if err == nil {
			if _, err := io.Copy(io.Discard, msg.Content()); err != nil {
				checkSentinel(t, err)
			}
			if len(msg.Header.AuthAttrs) > maxAttrs {
				t.Fatalf("%d attributes parsed", len(msg.Header.AuthAttrs))
			}
		} else {
			checkSentinel(t, err)
			if len(err.Error()) > 1024 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
		}
		checkReads(t, cr, len(in))
		// At most maxAttrs attributes are compared, O(n log n) times.
		if max := int64(4 * maxAttrs * 7); compares.Load() > max {
			t.Fatalf("%d attribute comparisons (at most %d)", compares.Load(), max)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	for _, m := range []*Manifest{testManifest(), {
		Version: 1, KeyAlg: KeyAlgAES128, KeyBits: 128, KCV: []byte{0, 0, 0},
		Created: time.Date(1999, 12, 31, 23, 59, 59, 0, time.UTC), Policy: PolicyNone, KeyID: make([]byte, 16),
	}} {
		der, err := MarshalManifest(m)
		require.NoError(f, err)
		f.Add(der)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			checkSentinel(t, err)
			return
		}
		// The parser is strict, so what it accepts is what Marshal writes.
		out, err := MarshalManifest(m)
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		if !bytes.Equal(out, b) {
			t.Fatalf("accepted a non-canonical encoding\n in: %x\nout: %x", b, out)
		}
	})
}

// fuzzSeeds returns small messages of each kind the package writes.
func fuzzSeeds(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{}
	kek, cek := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	nonce := bytes.Repeat([]byte{3}, 12)
	pt := []byte("fuzz seed plaintext")
	ec, err := EncryptionContextAttr(map[string]string{"a": "1", "bb": "22"})
	require.NoError(t, err)
	base := func() *Header {
		return &Header{
			Recipients: []Recipient{kekRecipient([]byte("kek"), kek, cek, false)},
			Algorithm:  OIDAES256GCM,
			Nonce:      nonce,
		}
	}
	add := func(name string, h *Header, chunk int) {
		seeds[name] = seal(t, h, cek, pt).encode(t, chunk)
	}
	add("kek-der", base(), 0)
	add("kek-ber", base(), 7)
	h := base()
	h.Recipients[0] = kekRecipient([]byte("kek"), kek[:16], cek, true)
	add("kekpad-der", h, 0)
	h = base()
	h.Recipients = append(h.Recipients, rsaRecipient(t, &testRSAKey.PublicKey, crypto.SHA256, cek),
		rsaRecipient(t, &testRSAKey.PublicKey, crypto.SHA1, cek))
	add("rsa-der", h, 0)
	h = base()
	h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData), ec}
	h.ICVLen = 12
	add("attrs-der", h, 0)
	h.ICVLen = 0
	add("attrs-ber", h, 5)
	h = base()
	h.ContentType = OIDKeyManifest
	h.AuthAttrs = []Attribute{ContentTypeAttr(OIDKeyManifest)}
	add("manifest-der", h, 0)
	empty := base()
	seeds["empty-der"] = seal(t, empty, cek, nil).encode(t, 0)
	seeds["empty-ber"] = seal(t, empty, cek, nil).encode(t, 3)
	for _, name := range []string{"kek-der", "attrs-ber"} {
		b := seeds[name]
		seeds[name+"-trunc-half"] = b[:len(b)/2]
		seeds[name+"-trunc-1"] = b[:len(b)-1]
	}
	return seeds
}

// TestGenerateFuzzCorpus rewrites the committed seed corpus, adding
// messages made by OpenSSL. Run with CMS_GEN_CORPUS=1.
func TestGenerateFuzzCorpus(t *testing.T) {
	if os.Getenv("CMS_GEN_CORPUS") == "" {
		t.Skip("set CMS_GEN_CORPUS=1 to rewrite testdata/fuzz")
	}
	seeds := fuzzSeeds(t)
	kek := bytes.Repeat([]byte{1}, 32)
	pt := bytes.Repeat([]byte("openssl "), 3)
	seeds["openssl-der"] = opensslEncrypt(t, pt, append([]string{"-aes-256-gcm", "-outform", "DER"}, secretKeyArgs(kek, []byte("kek"))...)...)
	seeds["openssl-ber"] = opensslEncrypt(t, pt, append([]string{"-aes-128-gcm", "-outform", "DER", "-stream"}, secretKeyArgs(kek[:16], []byte("kek"))...)...)
	f := opensslRSA(t)
	seeds["openssl-rsa-ber"] = opensslEncrypt(t, pt, "-aes-256-gcm", "-recip", f.certPath, "-keyid", "-outform", "DER", "-stream", "-keyopt", "rsa_padding_mode:oaep")
	writeCorpus(t, "FuzzParse", seeds)

	ms := map[string][]byte{}
	for i, m := range []*Manifest{testManifest()} {
		der, err := MarshalManifest(m)
		require.NoError(t, err)
		ms[fmt.Sprintf("manifest-%d", i)] = der
		ms[fmt.Sprintf("manifest-%d-trunc", i)] = der[:len(der)-3]
	}
	writeCorpus(t, "FuzzParseManifest", ms)
}

func writeCorpus(t *testing.T, fuzzName string, seeds map[string][]byte) {
	dir := filepath.Join("testdata", "fuzz", fuzzName)
	require.NoError(t, os.MkdirAll(dir, 0o755))
	for name, b := range seeds {
		data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644))
	}
}
