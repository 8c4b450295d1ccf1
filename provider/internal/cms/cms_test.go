package cms

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"io"
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var testRSAKey = func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}()

func rsaRecipient(t testing.TB, pub *rsa.PublicKey, h crypto.Hash, cek []byte) *KeyTransRecipient {
	t.Helper()
	hf := sha1.New()
	if h == crypto.SHA256 {
		hf = sha256.New()
	}
	ek, err := rsa.EncryptOAEP(hf, rand.Reader, pub, cek, nil)
	require.NoError(t, err)
	return &KeyTransRecipient{SubjectKeyID: SubjectKeyID(pub), Hash: h, EncryptedKey: ek}
}

func TestRoundTrip(t *testing.T) {
	kek128, kek192, kek256 := randBytes(16), randBytes(24), randBytes(32)
	keys := testKeys{
		keks: map[string][]byte{"k128": kek128, "k192": kek192, "k256": kek256},
		rsa:  testRSAKey,
	}
	ctx, err := EncryptionContextAttr(map[string]string{"file": "a.txt", "owner": "ops", "z": ""})
	require.NoError(t, err)

	type recipientsFn func(cek []byte) []Recipient
	kek := func(id string, k []byte, pad bool) recipientsFn {
		return func(cek []byte) []Recipient { return []Recipient{kekRecipient([]byte(id), k, cek, pad)} }
	}
	cases := []struct {
		name       string
		alg        asn1.ObjectIdentifier
		recipients recipientsFn
		attrs      bool
		icv        int
	}{
		{"aes128-wrap", OIDAES256GCM, kek("k128", kek128, false), false, 0},
		{"aes192-wrap", OIDAES256GCM, kek("k192", kek192, false), false, 0},
		{"aes256-wrap", OIDAES128GCM, kek("k256", kek256, false), false, 0},
		{"aes128-wrap-pad", OIDAES256GCM, kek("k128", kek128, true), false, 0},
		{"aes192-wrap-pad", OIDAES128GCM, kek("k192", kek192, true), false, 0},
		{"aes256-wrap-pad", OIDAES256GCM, kek("k256", kek256, true), true, 0},
		{"rsa-oaep-sha1", OIDAES256GCM, func(cek []byte) []Recipient {
			return []Recipient{rsaRecipient(t, &testRSAKey.PublicKey, crypto.SHA1, cek)}
		}, false, 0},
		{"rsa-oaep-sha256", OIDAES256GCM, func(cek []byte) []Recipient {
			return []Recipient{rsaRecipient(t, &testRSAKey.PublicKey, crypto.SHA256, cek)}
		}, true, 0},
		{"icv12", OIDAES256GCM, kek("k256", kek256, false), false, 12},
		{"icv13", OIDAES256GCM, kek("k256", kek256, false), true, 13},
		{"several", OIDAES256GCM, func(cek []byte) []Recipient {
			var rs []Recipient
			for i := range 10 {
				rs = append(rs, kekRecipient([]byte{'x', byte(i)}, randBytes(32), cek, i%2 == 0))
			}
			return append(rs,
				rsaRecipient(t, &testRSAKey.PublicKey, crypto.SHA1, cek),
				kekRecipient([]byte("k256"), kek256, cek, false))
		}, true, 0},
	}
	for _, c := range cases {
		for _, size := range []int{0, 1, 15, 4096, 70001} {
			for _, chunk := range []int{0, 1, 1000, 4096, 1 << 20} {
				if chunk == 1 && size > 4096 {
					continue
				}
				cek := randBytes(cekLen(oidDER(c.alg)))
				h := &Header{
					Recipients: c.recipients(cek),
					Algorithm:  c.alg,
					Nonce:      randBytes(12),
					ICVLen:     c.icv,
				}
				if c.attrs {
					h.AuthAttrs = []Attribute{ctx, ContentTypeAttr(OIDData)}
				}
				pt := randBytes(size)
				blob := seal(t, h, cek, pt).encode(t, chunk)
				m, got := keys.open(t, blob)
				require.True(t, bytes.Equal(pt, got), "%s size %d chunk %d", c.name, size, chunk)
				require.Len(t, m.Header.Recipients, len(h.Recipients))
				require.True(t, m.Header.ContentType.Equal(OIDData))
				require.Equal(t, h.icvLen(), m.Header.ICVLen)
				if c.attrs {
					require.Equal(t, h.AAD(), m.Header.AAD())
					require.Equal(t, byte(tagCtx1Con), m.RawAuthAttrs[0])
					require.Equal(t, m.RawAuthAttrs[1:], m.Header.AAD()[1:])
					ec, err := m.Header.EncryptionContext()
					require.NoError(t, err)
					require.Equal(t, map[string]string{"file": "a.txt", "owner": "ops", "z": ""}, ec)
				} else {
					require.Nil(t, m.RawAuthAttrs)
					require.Nil(t, m.Header.AAD())
				}
				// Re-encoding the parsed header gives the same DER.
				if chunk == 0 {
					again, err := Marshal(m.Header, readAll(t, m.Content()), m.MAC)
					require.NoError(t, err)
					require.Equal(t, blob, again)
				}
			}
		}
	}
}

func readAll(t testing.TB, r io.Reader) []byte {
	t.Helper()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return b
}

func testHeader(t testing.TB) (*Header, []byte) {
	cek := randBytes(32)
	return &Header{
		Recipients: []Recipient{kekRecipient([]byte("id"), randBytes(32), cek, false)},
		Algorithm:  OIDAES256GCM,
		Nonce:      randBytes(12),
	}, cek
}

func TestDefiniteIsDERAndLengthsAgree(t *testing.T) {
	h, cek := testHeader(t)
	h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData)}
	for _, size := range []int{0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 17} {
		s := seal(t, h, cek, randBytes(size))
		blob := s.encode(t, 0)
		// encoding/asn1 accepts only DER-style definite lengths: a cross
		// check of every length WriteHeader computed.
		var ci struct {
			Type    asn1.ObjectIdentifier
			Content asn1.RawValue `asn1:"explicit,tag:0"`
		}
		rest, err := asn1.Unmarshal(blob, &ci)
		require.NoError(t, err)
		require.Empty(t, rest)
		require.Equal(t, "1.2.840.113549.1.9.16.1.23", ci.Type.String())
		m, err := Parse(bytes.NewReader(blob), int64(len(blob)))
		require.NoError(t, err)
		var ranges []Range
		for r, err := range m.ContentRanges() {
			require.NoError(t, err)
			ranges = append(ranges, r)
		}
		if size == 0 {
			require.Empty(t, ranges)
		} else {
			require.Len(t, ranges, 1)
			require.Equal(t, s.ciphertext, blob[ranges[0].Off:ranges[0].Off+ranges[0].Len])
		}
	}
}

func TestIndefiniteRanges(t *testing.T) {
	h, cek := testHeader(t)
	s := seal(t, h, cek, randBytes(10000))
	blob := s.encode(t, 4096)
	require.Equal(t, []byte{0x30, 0x80}, blob[:2])
	require.Equal(t, make([]byte, 6), blob[len(blob)-6:])
	m, err := Parse(bytes.NewReader(blob), int64(len(blob)))
	require.NoError(t, err)
	var lens []int64
	for r, err := range m.ContentRanges() {
		require.NoError(t, err)
		lens = append(lens, r.Len)
	}
	require.Equal(t, []int64{4096, 4096, 1808}, lens)
	require.EqualValues(t, 10000, m.ContentLen)
}

// TestBERVariants hand-builds BER forms that WriteHeader does not produce:
// nested constructed OCTET STRINGs, definite-length constructed content,
// empty segments, non-minimal lengths on the outer structures.
func TestBERVariants(t *testing.T) {
	h, cek := testHeader(t)
	s := seal(t, h, cek, []byte("hello, world"))
	ct := s.ciphertext
	var head bytes.Buffer
	require.NoError(t, WriteHeader(&head, h, -1))
	prefix := head.Bytes()[:head.Len()-2] // without the A0 80 of encryptedContent
	var tail bytes.Buffer
	require.NoError(t, WriteTrailer(&tail, h, -1, s.mac))
	trailer := tail.Bytes()[2:] // without the EOC of encryptedContent

	oct := func(b []byte) []byte { return appendTLV(nil, tagOctetString, b) }
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	variants := map[string][]byte{
		"nested indefinite":    cat([]byte{0xa0, 0x80}, oct(ct[:3]), []byte{0x24, 0x80}, oct(ct[3:5]), []byte{0x24, 0x80}, oct(ct[5:]), []byte{0, 0, 0, 0}, []byte{0, 0}),
		"definite constructed": appendTLV(nil, tagCtx0Con, cat(oct(ct[:6]), appendTLV(nil, tagOctetStringCon, oct(ct[6:])))),
		"empty segments":       cat([]byte{0xa0, 0x80}, oct(nil), oct(ct[:1]), oct(nil), oct(ct[1:]), oct(nil), []byte{0, 0}),
		"non-minimal length":   cat([]byte{0xa0, 0x80, 0x04, 0x84, 0, 0, 0, byte(len(ct))}, ct, []byte{0, 0}),
	}
	for name, ec := range variants {
		blob := cat(prefix, ec, trailer)
		_, pt := testKeys{keks: map[string][]byte{}}.openWith(t, blob, cek)
		require.Equal(t, "hello, world", string(pt), name)
	}
}

// openWith decrypts with a known CEK.
func (k testKeys) openWith(t testing.TB, blob, cek []byte) (*Message, []byte) {
	t.Helper()
	m, err := Parse(bytes.NewReader(blob), int64(len(blob)))
	require.NoError(t, err)
	ct := readAll(t, m.Content())
	require.EqualValues(t, m.ContentLen, len(ct))
	pt, err := gcmOpen(cek, m.Header, ct, m.MAC)
	require.NoError(t, err)
	return m, pt
}

func TestAADMatchesRFC5083(t *testing.T) {
	h, _ := testHeader(t)
	ctx, err := EncryptionContextAttr(map[string]string{"b": "2", "a": "1"})
	require.NoError(t, err)
	h.AuthAttrs = []Attribute{ctx, ContentTypeAttr(OIDData)}
	aad := h.AAD()
	// The AAD is a DER SET OF Attribute: SET tag, elements in increasing
	// order of their encodings.
	var set cryptobyte.String
	s := cryptobyte.String(aad)
	require.True(t, s.ReadASN1(&set, cbasn1.SET))
	require.True(t, s.Empty())
	var elems [][]byte
	for !set.Empty() {
		var e cryptobyte.String
		require.True(t, set.ReadASN1Element(&e, cbasn1.SEQUENCE))
		elems = append(elems, e)
	}
	require.Len(t, elems, 2)
	require.True(t, slices.IsSortedFunc(elems, bytes.Compare))
	require.True(t, bytes.Contains(elems[0], derContentType)) // shorter encoding first
	// The message carries the same bytes under [1].
	blob, err := Marshal(h, nil, make([]byte, 16))
	require.NoError(t, err)
	m, err := Parse(bytes.NewReader(blob), int64(len(blob)))
	require.NoError(t, err)
	require.Equal(t, append([]byte{0xa1}, aad[1:]...), m.RawAuthAttrs)
	require.True(t, bytes.Contains(blob, m.RawAuthAttrs))
}

func TestWriteRejects(t *testing.T) {
	cek := randBytes(32)
	good := func() *Header {
		return &Header{
			Recipients: []Recipient{kekRecipient([]byte("id"), randBytes(32), cek, false)},
			Algorithm:  OIDAES256GCM,
			Nonce:      randBytes(12),
		}
	}
	manifestCT := ContentTypeAttr(OIDKeyManifest)
	cases := map[string]func(h *Header){
		"no recipients":      func(h *Header) { h.Recipients = nil },
		"nil recipient":      func(h *Header) { h.Recipients = []Recipient{nil} },
		"65 recipients":      func(h *Header) { h.Recipients = make([]Recipient, 65) },
		"bad alg":            func(h *Header) { h.Algorithm = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 26} },
		"short nonce":        func(h *Header) { h.Nonce = h.Nonce[:8] },
		"icv 11":             func(h *Header) { h.ICVLen = 11 },
		"icv 17":             func(h *Header) { h.ICVLen = 17 },
		"wrapped key length": func(h *Header) { h.Recipients[0].(*KEKRecipient).EncryptedKey = randBytes(24) },
		"bad wrap alg":       func(h *Header) { h.Recipients[0].(*KEKRecipient).WrapAlg = OIDRSAESOAEP },
		"empty key id":       func(h *Header) { h.Recipients[0].(*KEKRecipient).KeyID = nil },
		"rsa bad hash": func(h *Header) {
			h.Recipients[0] = &KeyTransRecipient{SubjectKeyID: []byte{1}, Hash: crypto.SHA512, EncryptedKey: []byte{1}}
		},
		"attrs without content type": func(h *Header) { h.AuthAttrs = []Attribute{{Type: OIDEncryptionContext, Values: [][]byte{{5, 0}}}} },
		"content type mismatch":      func(h *Header) { h.AuthAttrs = []Attribute{manifestCT} },
		"manifest without attrs":     func(h *Header) { h.ContentType = OIDKeyManifest },
		"duplicate attr":             func(h *Header) { h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData), ContentTypeAttr(OIDData)} },
		"attr value not DER": func(h *Header) {
			h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData), {Type: OIDEncryptionContext, Values: [][]byte{{5, 0, 0}}}}
		},
		"attr without values": func(h *Header) {
			h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData), {Type: OIDEncryptionContext}}
		},
	}
	for name, mutate := range cases {
		h := good()
		mutate(h)
		_, err := Marshal(h, nil, make([]byte, 16))
		require.Error(t, err, name)
		require.Error(t, WriteHeader(io.Discard, h, -1), name)
	}
	_, err := Marshal(good(), nil, make([]byte, 12))
	require.ErrorContains(t, err, "MAC is 12 bytes")

	h := good()
	h.ContentType = OIDKeyManifest
	h.AuthAttrs = []Attribute{manifestCT}
	_, err = Marshal(h, nil, make([]byte, 16))
	require.NoError(t, err)
}

func TestParseRecipients(t *testing.T) {
	// Recipient TLVs built by hand, each parsed alone.
	oidTLV := func(o asn1.ObjectIdentifier) []byte { return appendTLV(nil, tagOID, oidDER(o)) }
	seq := func(bs ...[]byte) []byte { return appendTLV(nil, tagSequence, bytes.Join(bs, nil)) }
	oct := func(b []byte) []byte { return appendTLV(nil, tagOctetString, b) }
	null := []byte{5, 0}
	sha1OID := asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	sha256OID := asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	mgf1 := asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
	ctx := func(n byte, b []byte) []byte { return appendTLV(nil, 0xa0|n, b) }
	ktri := func(version byte, params []byte) []byte {
		alg := seq(oidTLV(OIDRSAESOAEP), params)
		if params == nil {
			alg = seq(oidTLV(OIDRSAESOAEP))
		}
		return seq([]byte{2, 1, version}, appendTLV(nil, 0x80, []byte{1, 2, 3}), alg, oct([]byte{9}))
	}
	kekri := func(version byte, kekid, alg []byte) []byte {
		return appendTLV(nil, tagCtx2Con, bytes.Join([][]byte{{2, 1, version}, kekid, alg, oct(make([]byte, 40))}, nil))
	}
	hashFn := func(o asn1.ObjectIdentifier, params ...[]byte) []byte {
		return seq(append([][]byte{oidTLV(o)}, params...)...)
	}
	mgf := func(h []byte) []byte { return seq(oidTLV(mgf1), h) }

	cases := []struct {
		name string
		der  []byte
		hash crypto.Hash
		err  error
	}{
		{"oaep defaults", ktri(2, seq()), crypto.SHA1, nil},
		{"oaep explicit sha1 NULL", ktri(2, seq(ctx(0, hashFn(sha1OID, null)), ctx(1, mgf(hashFn(sha1OID, null))))), crypto.SHA1, nil},
		{"oaep explicit sha1 absent", ktri(2, seq(ctx(0, hashFn(sha1OID)), ctx(1, mgf(hashFn(sha1OID))))), crypto.SHA1, nil},
		{"oaep sha256 NULL", ktri(2, seq(ctx(0, hashFn(sha256OID, null)), ctx(1, mgf(hashFn(sha256OID, null))))), crypto.SHA256, nil},
		{"oaep sha256 absent (OpenSSL)", ktri(2, seq(ctx(0, hashFn(sha256OID)), ctx(1, mgf(hashFn(sha256OID))))), crypto.SHA256, nil},
		{"oaep explicit empty label", ktri(2, seq(ctx(2, seq(oidTLV(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 9}), oct(nil))))), crypto.SHA1, nil},
		{"oaep label", ktri(2, seq(ctx(2, seq(oidTLV(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 9}), oct([]byte{1}))))), 0, ErrUnsupported},
		{"oaep sha256 mgf1-sha1", ktri(2, seq(ctx(0, hashFn(sha256OID)))), 0, ErrUnsupported},
		{"oaep sha512", ktri(2, seq(ctx(0, hashFn(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3})))), 0, ErrUnsupported},
		{"oaep hash bad params", ktri(2, seq(ctx(0, hashFn(sha1OID, oct(nil))))), 0, ErrMalformed},
		{"oaep params absent", ktri(2, nil), 0, ErrMalformed},
		{"oaep trailing", ktri(2, seq(ctx(0, hashFn(sha1OID)), null)), 0, ErrMalformed},
		{"issuerAndSerial", ktri(0, seq()), 0, ErrUnsupported},
		{"ktri version 3", ktri(3, seq()), 0, ErrUnsupported},
		{"rsaEncryption", seq([]byte{2, 1, 2}, appendTLV(nil, 0x80, []byte{1}), seq(oidTLV(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}), null), oct([]byte{9})), 0, ErrUnsupported},
		{"kari", appendTLV(nil, 0xa1, nil), 0, ErrUnsupported},
		{"pwri", appendTLV(nil, 0xa3, nil), 0, ErrUnsupported},
		{"ori", appendTLV(nil, 0xa4, nil), 0, ErrUnsupported},
		{"kekri", kekri(4, seq(oct([]byte{1})), seq(oidTLV(OIDAES256Wrap))), 0, nil},
		{"kekri wrap NULL", kekri(4, seq(oct([]byte{1})), seq(oidTLV(OIDAES256Wrap), null)), 0, ErrMalformed},
		{"kekri version 3", kekri(3, seq(oct([]byte{1})), seq(oidTLV(OIDAES256Wrap))), 0, ErrUnsupported},
		{"kekri date", kekri(4, seq(oct([]byte{1}), appendTLV(nil, 0x18, []byte("20250101000000Z"))), seq(oidTLV(OIDAES256Wrap))), 0, ErrUnsupported},
		{"kekri 3des wrap", kekri(4, seq(oct([]byte{1})), seq(oidTLV(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 3, 6}))), 0, ErrUnsupported},
		{"kekri empty id", kekri(4, seq(oct(nil)), seq(oidTLV(OIDAES256Wrap))), 0, ErrUnsupported},
		{"trailing", append(ktri(2, seq()), 0), 0, ErrMalformed},
	}
	for _, c := range cases {
		r, err := parseRecipient(c.der)
		if c.err != nil {
			require.ErrorIs(t, err, c.err, c.name)
			continue
		}
		require.NoError(t, err, c.name)
		if kt, ok := r.(*KeyTransRecipient); ok {
			require.Equal(t, c.hash, kt.Hash, c.name)
			require.Equal(t, []byte{1, 2, 3}, kt.SubjectKeyID)
		}
	}
}

func TestOAEPParamsEncoding(t *testing.T) {
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		r := &KeyTransRecipient{SubjectKeyID: []byte{1}, Hash: h, EncryptedKey: []byte{2}}
		blob := marshalRecipient(t, r)
		got, err := parseRecipient(blob)
		require.NoError(t, err)
		require.Equal(t, r, got)
		if h == crypto.SHA1 {
			// RFC 4055: all defaults, so the DER is an empty SEQUENCE.
			require.True(t, bytes.Contains(blob, append(append([]byte{6, 9}, derRSAESOAEP...), 0x30, 0)))
		}
	}
}

func marshalRecipient(t testing.TB, r Recipient) []byte {
	b := cryptobyte.NewBuilder(nil)
	require.NoError(t, r.marshal(b, 32))
	out, err := b.Bytes()
	require.NoError(t, err)
	return out
}

func TestSubjectKeyIDIsMethod1(t *testing.T) {
	// RFC 5280 §4.2.1.2 method 1, from the SubjectPublicKeyInfo. (Since Go
	// 1.25 crypto/x509 fills in a truncated SHA-256 instead; OpenSSL uses
	// method 1, checked in the OpenSSL test.)
	der, err := x509.MarshalPKIXPublicKey(&testRSAKey.PublicKey)
	require.NoError(t, err)
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	_, err = asn1.Unmarshal(der, &spki)
	require.NoError(t, err)
	sum := sha1.Sum(spki.PublicKey.Bytes)
	require.Equal(t, sum[:], SubjectKeyID(&testRSAKey.PublicKey))
	require.Nil(t, SubjectKeyID(nil))
}

func TestEncryptionContext(t *testing.T) {
	ctx := map[string]string{"β": "x", "a": "", "ab": "yz"}
	a, err := EncryptionContextAttr(ctx)
	require.NoError(t, err)
	got, err := ParseEncryptionContext(a)
	require.NoError(t, err)
	require.Equal(t, ctx, got)
	// Keys in byte order: "a" < "ab" < "β".
	require.Equal(t, "301a30050c01610c0030080c0261620c02797a30070c02ceb20c0178", hexString(a.Values[0]))

	_, err = EncryptionContextAttr(nil)
	require.Error(t, err)
	_, err = EncryptionContextAttr(map[string]string{"": "v"})
	require.Error(t, err)
	_, err = EncryptionContextAttr(map[string]string{"k": "\xff"})
	require.Error(t, err)

	for name, v := range map[string]string{
		"unsorted":  "300e30050c01620c0030050c01610c00",
		"duplicate": "300e30050c01610c0030050c01610c00",
		"empty":     "3000",
		"empty key": "300630040c000c00",
		"trailing":  "300730050c01610c0000",
		"printable": "3007300513016113 00",
	} {
		_, err := ParseEncryptionContext(Attribute{Type: OIDEncryptionContext, Values: [][]byte{unhex(removeSpaces(v))}})
		require.ErrorIs(t, err, ErrMalformed, name)
	}
	_, err = ParseEncryptionContext(Attribute{Type: OIDData, Values: a.Values})
	require.ErrorIs(t, err, ErrUnsupported)

	h := &Header{}
	got, err = h.EncryptionContext()
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestParseErrorsWrapSentinels(t *testing.T) {
	h, cek := testHeader(t)
	ctx, err := EncryptionContextAttr(map[string]string{"k": "v"})
	require.NoError(t, err)
	h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData), ctx}
	s := seal(t, h, cek, randBytes(300))
	for _, chunk := range []int{0, 100} {
		blob := s.encode(t, chunk)
		// Every truncation and every appended byte fails cleanly.
		for i := range len(blob) {
			_, err := Parse(bytes.NewReader(blob[:i]), int64(i))
			require.ErrorIs(t, err, ErrMalformed, "truncated to %d", i)
		}
		extra := append(bytes.Clone(blob), 0)
		_, err := Parse(bytes.NewReader(extra), int64(len(extra)))
		require.ErrorIs(t, err, ErrMalformed)
		// A size larger than the data is reported as malformed too.
		_, err = Parse(bytes.NewReader(blob), int64(len(blob))+10)
		require.ErrorIs(t, err, ErrMalformed)
		// Flipping each byte never panics and always gives a sentinel.
		for i := range len(blob) {
			mut := bytes.Clone(blob)
			mut[i] ^= 0x41
			_, err := Parse(bytes.NewReader(mut), int64(len(mut)))
			if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("byte %d: %v", i, err)
			}
		}
	}
}

func TestParseRejects(t *testing.T) {
	h, cek := testHeader(t)
	s := seal(t, h, cek, []byte("x"))
	blob := s.encode(t, 0)

	replace := func(old, new []byte) []byte {
		require.Equal(t, 1, bytes.Count(blob, old))
		return bytes.Replace(blob, old, new, 1)
	}
	nonceTLV := appendTLV(nil, tagOctetString, h.Nonce)
	cases := map[string]struct {
		blob []byte
		err  error
	}{
		"envelopedData":                    {replace(derAuthEnveloped, oidDER(asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 99})), ErrUnsupported},
		"aes-192-gcm":                      {replace(derAES256GCM, oidDER(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 26})), ErrUnsupported},
		"aes-128-gcm, 32-byte wrapped key": {replace(derAES256GCM, derAES128GCM), ErrMalformed},
		"icv 16 vs mac":                    {replace(append(bytes.Clone(nonceTLV), 2, 1, 16), append(bytes.Clone(nonceTLV), 2, 1, 15)), ErrMalformed},
		"version 2":                        {replace([]byte{2, 1, 0, 0x31}, []byte{2, 1, 2, 0x31}), ErrUnsupported},
		"empty":                            {nil, ErrMalformed},
		"not a sequence":                   {[]byte{0x31, 0}, ErrMalformed},
		"high tag":                         {[]byte{0x3f, 0x80, 0}, ErrMalformed},
		"huge length":                      {[]byte{0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, ErrMalformed},
		"9 length octets":                  {[]byte{0x30, 0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0}, ErrMalformed},
		"primitive indefinite":             {[]byte{0x04, 0x80, 0, 0}, ErrMalformed},
	}
	for name, c := range cases {
		_, err := Parse(bytes.NewReader(c.blob), int64(len(c.blob)))
		require.ErrorIs(t, err, c.err, name)
	}

	// Deep nesting of constructed OCTET STRINGs is cut off.
	var head, tail bytes.Buffer
	require.NoError(t, WriteHeader(&head, h, -1))
	require.NoError(t, WriteTrailer(&tail, h, -1, s.mac))
	deep := bytes.Repeat([]byte{0x24, 0x80}, maxDepth)
	b := bytes.Join([][]byte{head.Bytes(), deep, {4, 1}, s.ciphertext, make([]byte, 2*maxDepth), tail.Bytes()}, nil)
	_, err := Parse(bytes.NewReader(b), int64(len(b)))
	require.ErrorIs(t, err, ErrUnsupported)
	b = bytes.Join([][]byte{head.Bytes(), deep[2:], {4, 1}, s.ciphertext, make([]byte, 2*maxDepth-2), tail.Bytes()}, nil)
	_, err = Parse(bytes.NewReader(b), int64(len(b)))
	require.NoError(t, err)

	// Too many recipients.
	var rs []Recipient
	for i := range maxRecipients {
		rs = append(rs, kekRecipient([]byte{byte(i)}, randBytes(16), cek, false))
	}
	h.Recipients = rs
	blob, err = Marshal(h, s.ciphertext, s.mac)
	require.NoError(t, err)
	setStart := bytes.Index(blob, []byte{2, 1, 0, 0x31}) + 3
	set := parseTLVAt(t, blob, setStart)
	first := appendTLV(nil, tagCtx2Con, parseTLVAt(t, set, 0))
	grown := appendTLV(nil, tagSet, append(bytes.Clone(set), first...)) // 65 recipients
	tooMany := bytes.Join([][]byte{blob[:setStart], grown, blob[setStart+len(appendTLV(nil, tagSet, set)):]}, nil)
	tooMany = fixOuterLengths(t, tooMany)
	_, err = Parse(bytes.NewReader(tooMany), int64(len(tooMany)))
	require.ErrorIs(t, err, ErrUnsupported)
	require.ErrorContains(t, err, "more than 64 recipients")
}

// parseTLVAt returns the contents of the definite TLV at off.
func parseTLVAt(t testing.TB, b []byte, off int) []byte {
	p := &reader{r: bytes.NewReader(b), size: int64(len(b))}
	x, err := p.readTL(int64(off), int64(len(b)))
	require.NoError(t, err)
	return b[x.body():x.end()]
}

// fixOuterLengths re-encodes the ContentInfo, [0] and AuthEnvelopedData
// lengths of a DER message whose recipients changed size.
func fixOuterLengths(t testing.TB, b []byte) []byte {
	p := &reader{r: bytes.NewReader(b), size: int64(len(b))}
	ci, err := p.readTL(0, 1<<40)
	require.NoError(t, err)
	oid, err := p.readTL(ci.body(), 1<<40)
	require.NoError(t, err)
	ex, err := p.readTL(oid.end(), 1<<40)
	require.NoError(t, err)
	aed, err := p.readTL(ex.body(), 1<<40)
	require.NoError(t, err)
	aedContents := b[aed.body():]
	inner := appendTLV(nil, tagSequence, aedContents)
	explicit := appendTLV(nil, tagCtx0Con, inner)
	return appendTLV(nil, tagSequence, append(b[oid.off:oid.end()], explicit...))
}

func TestParseAuthAttrsChecks(t *testing.T) {
	h, cek := testHeader(t)
	h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData)}
	s := seal(t, h, cek, []byte("x"))
	blob := s.encode(t, 0)
	ctAttr := append([]byte{0xa1}, h.AAD()[1:]...)
	require.Equal(t, 1, bytes.Count(blob, ctAttr))

	// authAttrs without content-type: patch its type to the neighbouring
	// 1.2.840.113549.1.9.2, an encoding of the same length.
	fake := bytes.Clone(ctAttr)
	oidAt := bytes.Index(fake, derContentType)
	fake[oidAt+len(derContentType)-1] ^= 1
	mut := bytes.Replace(blob, ctAttr, fake, 1)
	_, err := Parse(bytes.NewReader(mut), int64(len(mut)))
	require.ErrorIs(t, err, ErrMalformed)
	require.ErrorContains(t, err, "content-type")

	// Content type value differing from the EncryptedContentInfo's.
	fake = bytes.Clone(ctAttr)
	fake[len(fake)-1] ^= 2 // id-data → 1.2.840.113549.1.7.3
	mut = bytes.Replace(blob, ctAttr, fake, 1)
	_, err = Parse(bytes.NewReader(mut), int64(len(mut)))
	require.ErrorIs(t, err, ErrMalformed)

	// Non-DER attribute order.
	ec, err := EncryptionContextAttr(map[string]string{"k": "v"})
	require.NoError(t, err)
	h.AuthAttrs = []Attribute{ContentTypeAttr(OIDData), ec}
	s = seal(t, h, cek, []byte("x"))
	blob = s.encode(t, 0)
	aad := h.AAD()
	contents := parseTLVAt(t, aad, 0)
	first := parseTLVAt(t, contents, 0)
	n1 := len(appendTLV(nil, tagSequence, first))
	swapped := append([]byte{0xa1}, aad[1:len(aad)-len(contents)]...)
	swapped = append(append(swapped, contents[n1:]...), contents[:n1]...)
	mut = bytes.Replace(blob, append([]byte{0xa1}, aad[1:]...), swapped, 1)
	require.NotEqual(t, blob, mut)
	_, err = Parse(bytes.NewReader(mut), int64(len(mut)))
	require.ErrorIs(t, err, ErrMalformed)
	require.ErrorContains(t, err, "not DER")

	// A non-data content type requires authAttrs.
	h.ContentType = OIDKeyManifest
	h.AuthAttrs = []Attribute{ContentTypeAttr(OIDKeyManifest)}
	s = seal(t, h, cek, []byte("x"))
	blob = s.encode(t, 0)
	m, err := Parse(bytes.NewReader(blob), int64(len(blob)))
	require.NoError(t, err)
	require.True(t, m.Header.ContentType.Equal(OIDKeyManifest))
	start := bytes.Index(blob, append([]byte{0xa1}, h.AAD()[1:]...))
	attrsLen := len(appendTLV(nil, tagCtx1Con, parseTLVAt(t, blob, start)))
	cut := fixOuterLengths(t, append(bytes.Clone(blob[:start]), blob[start+attrsLen:]...))
	_, err = Parse(bytes.NewReader(cut), int64(len(cut)))
	require.ErrorIs(t, err, ErrMalformed)
	require.ErrorContains(t, err, "authAttrs missing")
}

func TestContentReaderErrors(t *testing.T) {
	h, cek := testHeader(t)
	s := seal(t, h, cek, randBytes(5000))
	blob := s.encode(t, 1000)
	m, err := Parse(bytes.NewReader(blob), int64(len(blob)))
	require.NoError(t, err)
	// Two readers are independent.
	r1, r2 := m.Content(), m.Content()
	b1 := make([]byte, 10)
	_, err = io.ReadFull(r1, b1)
	require.NoError(t, err)
	require.Equal(t, s.ciphertext, readAll(t, r2))
	require.Equal(t, s.ciphertext[10:], readAll(t, r1))

	// The input shrinking under a Message gives an error, not a panic.
	m.r = bytes.NewReader(blob[:2000])
	_, err = io.ReadAll(m.Content())
	require.Error(t, err)
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func removeSpaces(s string) string {
	return string(bytes.ReplaceAll([]byte(s), []byte(" "), nil))
}

// TestWrapAlgTableOwnsItsValues changes an exported OID, as a caller
// could (it is a slice), and checks that what messages are written and
// parsed against does not change with it.
func TestWrapAlgTableOwnsItsValues(t *testing.T) {
	checkWrapAlgTable(t)
	saved := slices.Clone(OIDAES128WrapPad)
	OIDAES128WrapPad[len(OIDAES128WrapPad)-1] = 99
	defer copy(OIDAES128WrapPad, saved)
	checkWrapAlgTable(t)
	i := wrapAlgIndex(oidDER(asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 8}))
	require.Equal(t, 3, i)
	require.Equal(t, "2.16.840.1.101.3.4.1.8", wrapAlgs[i].oid.String())
}

// checkWrapAlgTable fails if the wrap algorithm table differs from the
// algorithms of RFC 3565 §4.3 and RFC 5649 §6, written out here again.
func checkWrapAlgTable(t testing.TB) {
	t.Helper()
	want := []struct {
		oid    asn1.ObjectIdentifier
		kekLen int
	}{
		{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 5}, 16},
		{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 25}, 24},
		{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 45}, 32},
		{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 8}, 16},
		{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 28}, 24},
		{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 48}, 32},
	}
	require.Len(t, wrapAlgs, len(want))
	for i, w := range want {
		require.True(t, wrapAlgs[i].oid.Equal(w.oid), "entry %d: %v", i, wrapAlgs[i].oid)
		require.Equal(t, string(oidDER(w.oid)), wrapAlgs[i].der, "entry %d", i)
		require.Equal(t, w.kekLen, wrapAlgs[i].kekLen, "entry %d", i)
	}
}

// TestGCMSealStaysInItsBuffer: what the tests' GCM (gcmSeal) gives Seal,
// the output and sealSlack bytes more, holds everything Go's AES-GCM writes
// for the ICV lengths the package supports, whether or not the assembly
// overruns the output (golang/go#80288, seen on Go 1.26: it zeroed package
// globals under -race, see gcmSeal). It fails if sealSlack is too small for
// the Go it runs on, or if gcmSeal's bytes differ from Seal's.
func TestGCMSealStaysInItsBuffer(t *testing.T) {
	block, err := aes.NewCipher(make([]byte, 32))
	require.NoError(t, err)
	canary := bytes.Repeat([]byte{0xbb}, 16)
	overruns := 0
	for tag := 12; tag <= 16; tag++ {
		g, err := cipher.NewGCMWithTagSize(block, tag)
		require.NoError(t, err)
		nonce := make([]byte, 12)
		for n := 0; n <= 48; n++ {
			pt := bytes.Repeat([]byte{0x5c}, n)
			// The output, sealSlack bytes of 0xaa, then the canary (0xbb);
			// the overrun writes zeros.
			buf := append(make([]byte, n+tag, n+tag+sealSlack+len(canary)), bytes.Repeat([]byte{0xaa}, sealSlack)...)
			buf = append(buf, canary...)
			// Exactly the room the result needs: what Go writes past it.
			exact := g.Seal(buf[:0:n+tag], nonce, pt, nil)
			if !bytes.Equal(buf[n+tag:n+tag+sealSlack], bytes.Repeat([]byte{0xaa}, sealSlack)) {
				overruns++
			}
			// Nothing past the room gcmSeal makes.
			require.Equal(t, canary, buf[n+tag+sealSlack:], "tag %d, %d bytes: Seal wrote past sealSlack", tag, n)
			require.Equal(t, exact, gcmSeal(g, nonce, pt, nil), "tag %d, %d bytes", tag, n)
		}
	}
	t.Logf("%s: AES-GCM Seal wrote past its output in %d of %d cases (golang/go#80288)", runtime.Version(), overruns, 5*49)
}
