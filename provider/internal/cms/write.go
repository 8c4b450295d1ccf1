package cms

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"slices"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Header is everything in an AuthEnvelopedData except the encrypted
// content and the MAC (RFC 5083 §2.1):
//
//	ContentInfo ::= SEQUENCE {
//	  contentType id-ct-authEnvelopedData,
//	  content [0] EXPLICIT AuthEnvelopedData }
//
//	AuthEnvelopedData ::= SEQUENCE {
//	  version CMSVersion,                      -- 0
//	  originatorInfo [0] IMPLICIT ... OPTIONAL, -- never present here
//	  recipientInfos RecipientInfos,
//	  authEncryptedContentInfo EncryptedContentInfo,
//	  authAttrs [1] IMPLICIT AuthAttributes OPTIONAL,
//	  mac MessageAuthenticationCode,           -- the GCM tag
//	  unauthAttrs [2] IMPLICIT ... OPTIONAL }   -- never present here
//
//	EncryptedContentInfo ::= SEQUENCE {
//	  contentType ContentType,
//	  contentEncryptionAlgorithm AlgorithmIdentifier, -- AES-GCM, GCMParameters
//	  encryptedContent [0] IMPLICIT OCTET STRING OPTIONAL }
//
//	GCMParameters ::= SEQUENCE {                 -- RFC 5084 §3.2
//	  aes-nonce OCTET STRING,                    -- 12 bytes here
//	  aes-ICVlen INTEGER DEFAULT 12 }
type Header struct {
	// Recipients holds 1 to 64 recipients, each with the same
	// content-encryption key. DER orders them by encoding, so a parsed
	// header may list them in another order than they were written.
	Recipients []Recipient
	// ContentType is the type of the plaintext; the zero OID means
	// OIDData.
	ContentType x509.OID
	// Algorithm is OIDAES128GCM or OIDAES256GCM.
	Algorithm asn1.ObjectIdentifier
	// Nonce is the 12-byte GCM nonce.
	Nonce []byte
	// ICVLen is the GCM tag length, 12 to 16 bytes; zero means 16.
	ICVLen int
	// AuthAttrs are the authenticated attributes, nil for none. When
	// present they must include ContentTypeAttr(ContentType), and they
	// must be present when ContentType is not id-data (RFC 5083 §2.1).
	AuthAttrs []Attribute
}

// Limits this package imposes on messages it writes or parses.
const (
	maxRecipients = 64
	nonceLen      = 12
	defaultICVLen = 16 // what we write; RFC 5084's default is 12
	maxContentLen = 1 << 62
)

// AAD returns the additional authenticated data for the GCM operation:
// nil without authAttrs, otherwise their DER encoding with a SET OF tag
// in place of the [1] tag (RFC 5083 §2.2). It returns nil if the
// attributes cannot be encoded; WriteHeader reports why.
func (h *Header) AAD() []byte {
	if len(h.AuthAttrs) == 0 {
		return nil
	}
	contents, err := marshalAttrs(h.AuthAttrs)
	if err != nil {
		return nil
	}
	return appendTLV(nil, tagSet, contents)
}

// encodedHeader holds the encoded parts of a Header.
type encodedHeader struct {
	recipients []byte // contents of the RecipientInfos SET
	ct         []byte // content type OID TLV
	alg        []byte // contentEncryptionAlgorithm TLV
	attrs      []byte // contents of authAttrs, nil if absent
	icvLen     int
}

func (h *Header) icvLen() int {
	if h.ICVLen == 0 {
		return defaultICVLen
	}
	return h.ICVLen
}

func cekLen(alg []byte) int {
	switch {
	case bytes.Equal(alg, derAES128GCM):
		return 16
	case bytes.Equal(alg, derAES256GCM):
		return 32
	}
	return 0
}

func (h *Header) encode() (*encodedHeader, error) {
	e := &encodedHeader{icvLen: h.icvLen()}
	algDER := oidDERorNil(h.Algorithm)
	kl := cekLen(algDER)
	if kl == 0 {
		return nil, fmt.Errorf("cms: unsupported content encryption algorithm %v", h.Algorithm)
	}
	if len(h.Nonce) != nonceLen {
		return nil, fmt.Errorf("cms: GCM nonce is %d bytes, want %d", len(h.Nonce), nonceLen)
	}
	if e.icvLen < 12 || e.icvLen > 16 {
		return nil, fmt.Errorf("cms: GCM tag length %d out of range", e.icvLen)
	}
	if len(h.Recipients) == 0 {
		return nil, errNoRecipients
	}
	if len(h.Recipients) > maxRecipients {
		return nil, fmt.Errorf("cms: %d recipients, at most %d allowed", len(h.Recipients), maxRecipients)
	}
	encs := make([][]byte, len(h.Recipients))
	for i, r := range h.Recipients {
		if r == nil {
			return nil, errors.New("cms: nil recipient")
		}
		b := cryptobyte.NewBuilder(nil)
		if err := r.marshal(b, kl); err != nil {
			return nil, err
		}
		enc, err := b.Bytes()
		if err != nil {
			return nil, fmt.Errorf("cms: encoding recipient: %w", err)
		}
		encs[i] = enc
	}
	// DER sorts a SET OF by encoding (X.690 §11.6).
	slices.SortFunc(encs, bytes.Compare)
	e.recipients = bytes.Join(encs, nil)

	ct := contentTypeDER(h.ContentType)
	if checkOID("", ct) != nil {
		return nil, fmt.Errorf("cms: content type %s beyond the limits on object identifiers", oidString(ct))
	}
	e.ct = appendTLV(nil, tagOID, ct)

	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(algDER) })
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1OctetString(h.Nonce)
			if e.icvLen != 12 { // DER omits the DEFAULT
				b.AddASN1Int64(int64(e.icvLen))
			}
		})
	})
	e.alg = b.BytesOrPanic()

	if len(h.AuthAttrs) > 0 {
		attrs, err := marshalAttrs(h.AuthAttrs)
		if err != nil {
			return nil, err
		}
		if err := checkContentTypeAttr(h.AuthAttrs, e.ct); err != nil {
			return nil, fmt.Errorf("cms: %w", err)
		}
		e.attrs = attrs
	} else if !bytes.Equal(ct, derData) {
		return nil, errors.New("cms: authenticated attributes with the content type are required for content other than id-data")
	}
	return e, nil
}

// checkContentTypeAttr checks that attrs hold a content-type attribute
// with the single value ctTLV.
func checkContentTypeAttr(attrs []Attribute, ctTLV []byte) error {
	a, ok := FindAttr(attrs, OIDContentTypeAttr)
	if !ok {
		return errors.New("authenticated attributes lack the content-type attribute")
	}
	if len(a.Values) != 1 || !bytes.Equal(a.Values[0], ctTLV) {
		return errors.New("content-type attribute does not match the content type")
	}
	return nil
}

// trailerLen returns the length of authAttrs and mac.
func (e *encodedHeader) trailerLen() int64 {
	n := tlvLen(int64(e.icvLen))
	if e.attrs != nil {
		n += tlvLen(int64(len(e.attrs)))
	}
	return n
}

// WriteHeader writes the start of a message: everything up to the
// encrypted content octets.
//
// If contentLen ≥ 0 the message is DER and the caller then writes exactly
// contentLen bytes of ciphertext straight to w. If contentLen < 0 the
// outer structures use indefinite lengths (BER, X.690 §8.1.3.6) and the
// caller writes the ciphertext with any number of WriteChunk calls. Either
// way the caller finishes with WriteTrailer, passing the same h and
// contentLen. h must not change in between.
func WriteHeader(w io.Writer, h *Header, contentLen int64) error {
	e, err := h.encode()
	if err != nil {
		return err
	}
	return e.writeHeader(w, contentLen)
}

func (e *encodedHeader) writeHeader(w io.Writer, contentLen int64) error {
	if contentLen > maxContentLen {
		return fmt.Errorf("cms: content length %d too large", contentLen)
	}
	def := contentLen >= 0
	var eciLen, aedLen, explicitLen, ciLen int64 = -1, -1, -1, -1
	if def {
		eciLen = int64(len(e.ct)) + int64(len(e.alg)) + tlvLen(contentLen)
		aedLen = 3 + tlvLen(int64(len(e.recipients))) + tlvLen(eciLen) + e.trailerLen()
		explicitLen = tlvLen(aedLen)
		ciLen = int64(len(derAuthEnveloped)) + 2 + tlvLen(explicitLen)
	}
	b := make([]byte, 0, 64+len(e.recipients)+len(e.alg))
	b = appendHeader(b, tagSequence, ciLen)
	b = appendTLV(b, tagOID, derAuthEnveloped)
	b = appendHeader(b, tagCtx0Con, explicitLen)
	b = appendHeader(b, tagSequence, aedLen)
	b = append(b, tagInteger, 1, 0) // version 0
	b = appendTLV(b, tagSet, e.recipients)
	b = appendHeader(b, tagSequence, eciLen)
	b = append(b, e.ct...)
	b = append(b, e.alg...)
	if def {
		b = appendHeader(b, tagCtx0Prim, contentLen)
	} else {
		b = appendHeader(b, tagCtx0Con, -1)
	}
	_, err := w.Write(b)
	return err
}

// WriteChunk writes p as one segment of the encrypted content of a message
// started by WriteHeader with a negative contentLen: an OCTET STRING inside
// the constructed encryptedContent. An empty p writes nothing.
func WriteChunk(w io.Writer, p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if _, err := w.Write(appendHeader(make([]byte, 0, 10), tagOctetString, int64(len(p)))); err != nil {
		return err
	}
	_, err := w.Write(p)
	return err
}

// WriteTrailer ends a message started by WriteHeader(w, h, contentLen)
// once the encrypted content is written: it writes the authAttrs, the MAC
// (the GCM tag, ICVLen bytes) and, for contentLen < 0, the end-of-contents
// octets of the indefinite-length structures.
func WriteTrailer(w io.Writer, h *Header, contentLen int64, mac []byte) error {
	e, err := h.encode()
	if err != nil {
		return err
	}
	return e.writeTrailer(w, contentLen, mac)
}

func (e *encodedHeader) writeTrailer(w io.Writer, contentLen int64, mac []byte) error {
	if len(mac) != e.icvLen {
		return fmt.Errorf("cms: MAC is %d bytes, want %d", len(mac), e.icvLen)
	}
	var b []byte
	if contentLen < 0 {
		b = append(b, 0, 0, 0, 0) // ends encryptedContent, authEncryptedContentInfo
	}
	if e.attrs != nil {
		b = appendTLV(b, tagCtx1Con, e.attrs)
	}
	b = appendTLV(b, tagOctetString, mac)
	if contentLen < 0 {
		b = append(b, 0, 0, 0, 0, 0, 0) // ends AuthEnvelopedData, [0], ContentInfo
	}
	_, err := w.Write(b)
	return err
}

// Marshal returns the DER message with header h, encrypted content content
// and MAC mac. It is meant for small messages such as exported keys.
func Marshal(h *Header, content, mac []byte) ([]byte, error) {
	e, err := h.encode()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(128 + len(e.recipients) + len(e.attrs) + len(content) + len(mac))
	n := int64(len(content))
	if err := e.writeHeader(&buf, n); err != nil {
		return nil, err
	}
	buf.Write(content)
	if err := e.writeTrailer(&buf, n, mac); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
