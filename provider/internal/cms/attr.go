package cms

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Attribute is one authenticated attribute (RFC 5652 §5.3):
//
//	Attribute ::= SEQUENCE {
//	  attrType   OBJECT IDENTIFIER,
//	  attrValues SET OF AttributeValue }
type Attribute struct {
	Type x509.OID
	// Values holds the DER encoding of each AttributeValue, tag included.
	// There must be at least one.
	Values [][]byte
}

// Limits on authAttrs. hsmkeys writes two attributes (content type and
// encryption context); OpenSSL writes none or one. The count is capped so
// that a 1 MiB authAttrs of tiny attributes is refused at once (issue 12).
const (
	maxAuthAttrsLen = 1 << 20 // encoded
	maxAttrs        = 64      // attributes
)

// compareAttr orders attribute encodings and types. It is a variable only
// so that tests can count the comparisons made.
var compareAttr = bytes.Compare

// duplicate returns the index of an element of keys equal to an earlier
// one in sorted order, or -1: O(n log n) comparisons, not the O(n²) of
// comparing every pair.
func duplicate(keys [][]byte) int {
	idx := make([]int, len(keys))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return compareAttr(keys[a], keys[b]) })
	for i := 1; i < len(idx); i++ {
		if compareAttr(keys[idx[i-1]], keys[idx[i]]) == 0 {
			return idx[i]
		}
	}
	return -1
}

// ContentTypeAttr returns the content-type attribute (RFC 5652 §11.1) for
// contentType; the zero OID stands for id-data. RFC 5083 §2.1 requires it
// whenever authAttrs are present.
func ContentTypeAttr(contentType x509.OID) Attribute {
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) {
		b.AddBytes(contentTypeDER(contentType))
	})
	return Attribute{Type: OIDContentTypeAttr, Values: [][]byte{b.BytesOrPanic()}}
}

// EncryptionContextAttr returns the hsmkeys encryption-context attribute
// (type OIDEncryptionContext) holding ctx. Its single value is
//
//	EncryptionContext ::= SEQUENCE SIZE (1..MAX) OF SEQUENCE {
//	  key   UTF8String (SIZE (1..MAX)),
//	  value UTF8String }
//
// with the entries in increasing byte order of key, each key once. It is a
// SEQUENCE OF rather than a SET OF because DER orders a SET OF by encoding,
// which is not key order; this way the single encoding is also the readable
// one. An empty context is expressed by leaving the attribute out, so ctx
// must not be empty.
func EncryptionContextAttr(ctx map[string]string) (Attribute, error) {
	if len(ctx) == 0 {
		return Attribute{}, errors.New("cms: empty encryption context")
	}
	keys := make([]string, 0, len(ctx))
	for k, v := range ctx {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return Attribute{}, errors.New("cms: encryption context keys must be non-empty UTF-8, values UTF-8")
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b := cryptobyte.NewBuilder(nil)
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for _, k := range keys {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(k)) })
				b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(ctx[k])) })
			})
		}
	})
	v, err := b.Bytes()
	if err != nil {
		return Attribute{}, fmt.Errorf("cms: encoding encryption context: %w", err)
	}
	return Attribute{Type: OIDEncryptionContext, Values: [][]byte{v}}, nil
}

// ParseEncryptionContext decodes an attribute made by EncryptionContextAttr.
func ParseEncryptionContext(a Attribute) (map[string]string, error) {
	if !a.Type.Equal(OIDEncryptionContext) {
		return nil, unsupported("attribute %s is not an encryption context", a.Type)
	}
	if len(a.Values) != 1 {
		return nil, malformed("encryption context with %d values", len(a.Values))
	}
	s := cryptobyte.String(a.Values[0])
	var seq cryptobyte.String
	if !s.ReadASN1(&seq, cbasn1.SEQUENCE) || !s.Empty() || seq.Empty() {
		return nil, malformed("bad encryption context")
	}
	ctx := make(map[string]string)
	var prev []byte
	for !seq.Empty() {
		var e cryptobyte.String
		var k, v []byte
		if !seq.ReadASN1(&e, cbasn1.SEQUENCE) ||
			!e.ReadASN1Bytes(&k, cbasn1.UTF8String) ||
			!e.ReadASN1Bytes(&v, cbasn1.UTF8String) || !e.Empty() {
			return nil, malformed("bad encryption context entry")
		}
		if len(k) == 0 || !utf8.Valid(k) || !utf8.Valid(v) {
			return nil, malformed("encryption context entry not UTF-8")
		}
		if prev != nil && bytes.Compare(prev, k) >= 0 {
			return nil, malformed("encryption context keys not in increasing order")
		}
		prev = k
		ctx[string(k)] = string(v)
	}
	return ctx, nil
}

// FindAttr returns the attribute of type t in attrs.
func FindAttr(attrs []Attribute, t x509.OID) (Attribute, bool) {
	for _, a := range attrs {
		if a.Type.Equal(t) {
			return a, true
		}
	}
	return Attribute{}, false
}

// marshalAttrs returns the contents of the DER SET OF Attribute: the
// attributes, and the values within each, in increasing order of their
// encodings (X.690 §11.6).
func marshalAttrs(attrs []Attribute) ([]byte, error) {
	if len(attrs) > maxAttrs {
		return nil, fmt.Errorf("cms: %d authenticated attributes, at most %d allowed", len(attrs), maxAttrs)
	}
	encs := make([][]byte, 0, len(attrs))
	types := make([][]byte, len(attrs))
	for i, a := range attrs {
		t := oidContents(a.Type)
		if t == nil {
			return nil, errors.New("cms: attribute without type")
		}
		if checkOID("", t) != nil {
			return nil, fmt.Errorf("cms: attribute type %s beyond the limits on object identifiers", oidString(t))
		}
		types[i] = t
	}
	if i := duplicate(types); i >= 0 {
		return nil, fmt.Errorf("cms: attribute %s given twice", oidString(types[i]))
	}
	for i, a := range attrs {
		t := types[i]
		if len(a.Values) == 0 {
			return nil, fmt.Errorf("cms: attribute %s has no value", a.Type)
		}
		vals := make([][]byte, len(a.Values))
		for j, v := range a.Values {
			s := cryptobyte.String(v)
			var tag cbasn1.Tag
			var elem cryptobyte.String
			if !s.ReadAnyASN1Element(&elem, &tag) || !s.Empty() {
				return nil, fmt.Errorf("cms: value of attribute %s is not one DER element", a.Type)
			}
			vals[j] = v
		}
		slices.SortFunc(vals, compareAttr)
		b := cryptobyte.NewBuilder(nil)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(t) })
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				for _, v := range vals {
					b.AddBytes(v)
				}
			})
		})
		enc, err := b.Bytes()
		if err != nil {
			return nil, fmt.Errorf("cms: encoding attribute %s: %w", a.Type, err)
		}
		encs = append(encs, enc)
	}
	slices.SortFunc(encs, compareAttr)
	out := bytes.Join(encs, nil)
	if len(out) > maxAuthAttrsLen {
		return nil, fmt.Errorf("cms: authenticated attributes exceed %d bytes", maxAuthAttrsLen)
	}
	return out, nil
}

// parseAttrs parses the contents of a SET OF Attribute. The caller checks
// that they were DER by re-encoding.
func parseAttrs(s cryptobyte.String) ([]Attribute, error) {
	var attrs []Attribute
	var types [][]byte
	for !s.Empty() {
		if len(attrs) == maxAttrs {
			return nil, unsupported("more than %d authenticated attributes", maxAttrs)
		}
		var a, t, vals cryptobyte.String
		if !s.ReadASN1(&a, cbasn1.SEQUENCE) ||
			!a.ReadASN1(&t, cbasn1.OBJECT_IDENTIFIER) ||
			!a.ReadASN1(&vals, cbasn1.SET) || !a.Empty() {
			return nil, malformed("bad attribute")
		}
		if err := checkOID("attribute type", t); err != nil {
			return nil, err
		}
		oid, ok := oidFromDER(t)
		if !ok {
			return nil, malformed("bad attribute type")
		}
		attr := Attribute{Type: oid}
		for !vals.Empty() {
			var v cryptobyte.String
			var tag cbasn1.Tag
			if !vals.ReadAnyASN1Element(&v, &tag) {
				return nil, malformed("bad value of attribute %s", oid)
			}
			attr.Values = append(attr.Values, bytes.Clone(v))
		}
		if len(attr.Values) == 0 {
			return nil, malformed("attribute %s has no value", oid)
		}
		attrs = append(attrs, attr)
		types = append(types, t)
	}
	if i := duplicate(types); i >= 0 {
		return nil, malformed("attribute %s given twice", attrs[i].Type)
	}
	return attrs, nil
}

// EncryptionContext returns the encryption context in h.AuthAttrs. Leaving
// the attribute out is how an empty context is written, so its absence
// gives an empty (nil) map and no error.
func (h *Header) EncryptionContext() (map[string]string, error) {
	a, ok := FindAttr(h.AuthAttrs, OIDEncryptionContext)
	if !ok {
		return nil, nil
	}
	return ParseEncryptionContext(a)
}
