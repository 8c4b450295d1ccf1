package cms

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"strings"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Message is a parsed AuthEnvelopedData.
type Message struct {
	Header *Header
	// MAC is the GCM tag, Header.ICVLen bytes.
	MAC []byte
	// RawAuthAttrs is the authAttrs element as it appears in the input,
	// [1] tag included, or nil if absent. Header.AAD() returns the same
	// bytes with a SET OF tag.
	RawAuthAttrs []byte
	// ContentLen is the length of the encrypted content, which for GCM is
	// the length of the plaintext.
	ContentLen int64

	r            io.ReaderAt
	size         int64
	content      tl    // the encryptedContent element
	contentLimit int64 // the end of its container
}

// Range is a byte range of the input.
type Range struct {
	Off, Len int64
}

// Limits on parsing.
const (
	maxDepth        = 8       // nested constructed OCTET STRINGs in encryptedContent
	maxRecipientSet = 1 << 20 // encoded recipientInfos
	maxSmallElem    = 4096    // OIDs, algorithm identifiers, version
)

// Parse parses the message of size bytes in r without reading the
// encrypted content into memory. It accepts DER and the BER that OpenSSL
// and WriteHeader produce: indefinite lengths and a constructed
// encryptedContent on the outer structures; the recipients, algorithm
// identifiers and authAttrs must be DER. The input must hold exactly one
// message. r must stay unchanged while the Message is used.
//
// Errors about the input wrap ErrMalformed or ErrUnsupported; errors from
// r are returned wrapped as they are.
func Parse(r io.ReaderAt, size int64) (*Message, error) {
	if size < 0 {
		return nil, malformed("negative size")
	}
	p := &reader{r: r, size: size}
	m := &Message{Header: &Header{}, r: r, size: size}
	top := frame{end: size}

	ci, err := p.expect(0, top, tagSequence, "ContentInfo")
	if err != nil {
		return nil, err
	}
	fCI := ci.enter(top)
	oid, err := p.small(ci.body(), fCI, tagOID, "content type")
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(oid.contents, derAuthEnveloped) {
		return nil, contentTypeError(oid.contents)
	}
	explicit, err := p.expect(oid.end(), fCI, tagCtx0Con, "ContentInfo content")
	if err != nil {
		return nil, err
	}
	f0 := explicit.enter(fCI)
	aed, err := p.expect(explicit.body(), f0, tagSequence, "AuthEnvelopedData")
	if err != nil {
		return nil, err
	}
	fA := aed.enter(f0)
	pos, err := m.parseAuthEnvelopedData(p, aed.body(), fA)
	if err != nil {
		return nil, err
	}
	if pos, err = p.close(fA, pos); err != nil {
		return nil, err
	}
	if pos, err = p.close(f0, pos); err != nil {
		return nil, err
	}
	if pos, err = p.close(fCI, pos); err != nil {
		return nil, err
	}
	if pos != size {
		return nil, malformed("trailing data after ContentInfo")
	}
	return m, nil
}

func (m *Message) parseAuthEnvelopedData(p *reader, pos int64, fA frame) (int64, error) {
	h := m.Header
	v, err := p.small(pos, fA, tagInteger, "version")
	if err != nil {
		return 0, err
	}
	var version int
	if s := cryptobyte.String(v.raw); !s.ReadASN1Integer(&version) {
		return 0, malformed("bad version")
	}
	if version != 0 {
		return 0, unsupported("AuthEnvelopedData version %d", version)
	}
	pos = v.end()

	t, err := p.readTL(pos, fA.end)
	if err != nil {
		return 0, err
	}
	if t.tag == tagCtx0Con {
		return 0, unsupported("originatorInfo")
	}
	if t.tag != tagSet {
		return 0, malformed("expected recipientInfos, found tag 0x%02x", t.tag)
	}
	if t.n < 0 {
		return 0, unsupported("indefinite-length recipientInfos")
	}
	if t.n > maxRecipientSet {
		return 0, unsupported("recipientInfos of %d bytes", t.n)
	}
	raw, err := p.readAt(t.off, t.end()-t.off)
	if err != nil {
		return 0, err
	}
	var set cryptobyte.String
	if s := cryptobyte.String(raw); !s.ReadASN1(&set, cbasn1.SET) || !s.Empty() {
		return 0, malformed("bad recipientInfos")
	}
	var unknown []string
	for !set.Empty() {
		var ri cryptobyte.String
		var tag cbasn1.Tag
		if !set.ReadAnyASN1Element(&ri, &tag) {
			return 0, malformed("bad RecipientInfo")
		}
		if len(h.Recipients) == maxRecipients {
			return 0, unsupported("more than %d recipients", maxRecipients)
		}
		rcp, err := parseRecipient(ri)
		if errors.Is(err, ErrUnsupported) {
			// RFC 5652 §6.1: a recipient picks its own RecipientInfo; the
			// others need not be understood.
			rcp = &OtherRecipient{Reason: err.Error(), Raw: bytes.Clone(ri)}
			unknown = append(unknown, err.Error())
		} else if err != nil {
			return 0, err
		}
		h.Recipients = append(h.Recipients, rcp)
	}
	if len(h.Recipients) == 0 {
		return 0, malformed("no recipients")
	}
	if len(unknown) == len(h.Recipients) {
		return 0, unsupported("no supported recipient: %s", summarize(unknown))
	}
	pos = t.end()

	eci, err := p.expect(pos, fA, tagSequence, "authEncryptedContentInfo")
	if err != nil {
		return 0, err
	}
	fE := eci.enter(fA)
	if pos, err = m.parseEncryptedContentInfo(p, eci.body(), fE); err != nil {
		return 0, err
	}
	kl := cekLen(oidDER(h.Algorithm))
	for _, r := range h.Recipients {
		if r, ok := r.(*KEKRecipient); ok && len(r.EncryptedKey) != kl+8 {
			return 0, malformed("wrapped key of %d bytes for a %d-byte content-encryption key", len(r.EncryptedKey), kl)
		}
	}
	if pos, err = p.close(fE, pos); err != nil {
		return 0, err
	}

	t, err = p.readTL(pos, fA.end)
	if err != nil {
		return 0, err
	}
	if t.tag == tagCtx1Con {
		if err := m.parseAuthAttrs(p, t); err != nil {
			return 0, err
		}
		pos = t.end()
		if t, err = p.readTL(pos, fA.end); err != nil {
			return 0, err
		}
	} else if !bytes.Equal(contentTypeDER(h.ContentType), derData) {
		return 0, malformed("authAttrs missing for content type %s", h.ContentType)
	}

	if t.tag != tagOctetString {
		return 0, malformed("expected mac, found tag 0x%02x", t.tag)
	}
	if t.n != int64(h.ICVLen) {
		return 0, malformed("mac is %d bytes, aes-ICVlen says %d", t.n, h.ICVLen)
	}
	if m.MAC, err = p.readAt(t.body(), t.n); err != nil {
		return 0, err
	}
	pos = t.end()

	if end, err := p.atEnd(fA, pos); err != nil {
		return 0, err
	} else if !end {
		t, err := p.readTL(pos, fA.end)
		if err != nil {
			return 0, err
		}
		if t.tag == tagCtx2Con {
			return 0, unsupported("unauthAttrs")
		}
		return 0, malformed("unexpected tag 0x%02x after mac", t.tag)
	}
	return pos, nil
}

// summarize joins reasons, each once with a count, without the sentinel's
// text each repeats: 64 recipients give one short line.
func summarize(reasons []string) string {
	prefix := ErrUnsupported.Error() + ": "
	var order []string
	count := map[string]int{}
	for _, r := range reasons {
		r = strings.TrimPrefix(r, prefix)
		if count[r] == 0 {
			order = append(order, r)
		}
		count[r]++
	}
	for i, r := range order {
		if n := count[r]; n > 1 {
			order[i] = fmt.Sprintf("%s (%d times)", r, n)
		}
	}
	return strings.Join(order, "; ")
}

func (m *Message) parseEncryptedContentInfo(p *reader, pos int64, fE frame) (int64, error) {
	h := m.Header
	ct, err := p.small(pos, fE, tagOID, "content type")
	if err != nil {
		return 0, err
	}
	if err := checkOID("content type", ct.contents); err != nil {
		return 0, err
	}
	oid, ok := oidFromDER(ct.contents)
	if !ok {
		return 0, malformed("bad content type")
	}
	h.ContentType = oid
	pos = ct.end()

	alg, err := p.small(pos, fE, tagSequence, "content encryption algorithm")
	if err != nil {
		return 0, err
	}
	if err := h.parseGCMAlg(alg.raw); err != nil {
		return 0, err
	}
	pos = alg.end()

	if end, err := p.atEnd(fE, pos); err != nil {
		return 0, err
	} else if end {
		return 0, unsupported("detached content")
	}
	t, err := p.readTL(pos, fE.end)
	if err != nil {
		return 0, err
	}
	if t.tag != tagCtx0Prim && t.tag != tagCtx0Con {
		return 0, malformed("expected encryptedContent, found tag 0x%02x", t.tag)
	}
	m.content, m.contentLimit = t, fE.end
	it := newSegIter(p, t, fE)
	for {
		m.ContentLen += int64(it.run(nil))
		seg, ok, err := it.next()
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		m.ContentLen += seg.Len
	}
	return it.pos, nil
}

// parseGCMAlg parses the contentEncryptionAlgorithm TLV.
func (h *Header) parseGCMAlg(raw []byte) error {
	s := cryptobyte.String(raw)
	var alg, oid, params cryptobyte.String
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !s.Empty() || !alg.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) {
		return malformed("bad content encryption algorithm")
	}
	switch {
	case bytes.Equal(oid, derAES128GCM):
		h.Algorithm = slices.Clone(OIDAES128GCM) // callers own what Parse returns
	case bytes.Equal(oid, derAES256GCM):
		h.Algorithm = slices.Clone(OIDAES256GCM)
	default:
		return unsupported("content encryption algorithm %s", oidString(oid))
	}
	icv := 12 // DEFAULT
	if !alg.ReadASN1(&params, cbasn1.SEQUENCE) || !alg.Empty() ||
		!params.ReadASN1Bytes(&h.Nonce, cbasn1.OCTET_STRING) ||
		(params.PeekASN1Tag(cbasn1.INTEGER) && !params.ReadASN1Integer(&icv)) ||
		!params.Empty() {
		return malformed("bad GCMParameters")
	}
	if len(h.Nonce) != nonceLen {
		return unsupported("GCM nonce of %d bytes", len(h.Nonce))
	}
	if icv < 12 || icv > 16 {
		return malformed("aes-ICVlen %d", icv)
	}
	h.ICVLen = icv
	return nil
}

func (m *Message) parseAuthAttrs(p *reader, t tl) error {
	if t.n < 0 {
		return malformed("authAttrs not DER")
	}
	if t.n > maxAuthAttrsLen {
		return unsupported("authAttrs of %d bytes", t.n)
	}
	raw, err := p.readAt(t.off, t.end()-t.off)
	if err != nil {
		return err
	}
	var contents cryptobyte.String
	if s := cryptobyte.String(raw); !s.ReadASN1(&contents, cbasn1.Tag(1).ContextSpecific().Constructed()) || !s.Empty() {
		return malformed("bad authAttrs")
	}
	attrs, err := parseAttrs(contents)
	if err != nil {
		return err
	}
	if len(attrs) == 0 {
		return malformed("empty authAttrs")
	}
	// The MAC covers the DER encoding (RFC 5083 §2.2); anything else could
	// not be checked against what AAD returns.
	der, err := marshalAttrs(attrs)
	if err != nil || !bytes.Equal(der, contents) {
		return malformed("authAttrs not DER")
	}
	if err := checkContentTypeAttr(attrs, appendTLV(nil, tagOID, contentTypeDER(m.Header.ContentType))); err != nil {
		return malformed("%v", err)
	}
	m.Header.AuthAttrs = attrs
	m.RawAuthAttrs = raw
	return nil
}

// Content returns a reader of the encrypted content. Each call returns a
// new reader starting at the beginning. It reads the input through a
// window, so a content in many small segments costs one ReadAt per window,
// not one per segment (issue 12).
func (m *Message) Content() io.Reader {
	return &contentReader{it: m.segments()}
}

// ContentRanges yields the byte ranges of the input that hold the
// encrypted content, in order: one for DER, one per non-empty OCTET STRING
// segment for a constructed encryptedContent.
func (m *Message) ContentRanges() iter.Seq2[Range, error] {
	return func(yield func(Range, error) bool) {
		it := m.segments()
		for {
			seg, ok, err := it.next()
			if err != nil {
				yield(Range{}, err)
				return
			}
			if !ok || !yield(seg, nil) {
				return
			}
		}
	}
}

func (m *Message) segments() *segIter {
	p := &reader{r: m.r, size: m.size}
	return newSegIter(p, m.content, frame{end: m.contentLimit})
}

type contentReader struct {
	it       *segIter
	cur, end int64
	err      error
}

// Read fills b from as many segments as it takes.
func (c *contentReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if c.cur == c.end {
			if c.err == nil {
				if k := c.it.run(b[n:]); k > 0 {
					n += k
					continue
				}
			}
			if c.err == nil {
				seg, ok, err := c.it.next()
				switch {
				case err != nil:
					c.err = err
				case !ok:
					c.err = io.EOF
				default:
					c.cur, c.end = seg.Off, seg.Off+seg.Len
					continue
				}
			}
			if n > 0 {
				return n, nil
			}
			return 0, c.err
		}
		k := min(int64(len(b)-n), c.end-c.cur)
		if p := c.it.p; c.cur >= p.winOff && c.cur+k <= p.winOff+int64(len(p.win)) {
			// The window holds it: no call, and no memmove for a byte.
			if w := p.win[c.cur-p.winOff:]; k == 1 {
				b[n] = w[0]
			} else {
				copy(b[n:n+int(k)], w)
			}
		} else if err := p.read(b[n:n+int(k)], c.cur); err != nil {
			c.err, c.end = err, c.cur
			return n, err
		}
		c.cur += k
		n += int(k)
	}
	if n == 0 && c.cur == c.end && c.err != nil {
		return 0, c.err
	}
	return n, nil
}

// tl is a parsed identifier and length.
type tl struct {
	tag byte
	off int64 // offset of the identifier octet
	hdr int64 // length of identifier and length octets
	n   int64 // length of the contents, -1 for indefinite
}

func (t tl) body() int64 { return t.off + t.hdr }
func (t tl) end() int64  { return t.off + t.hdr + t.n } // definite only

// frame is an open constructed element. Its children must end by end,
// which for an indefinite-length element is inherited from its parent.
type frame struct {
	indefinite bool
	end        int64
}

func (t tl) enter(parent frame) frame {
	if t.n < 0 {
		return frame{indefinite: true, end: parent.end}
	}
	return frame{end: t.end()}
}

// reader reads TLVs from an io.ReaderAt through a small window.
type reader struct {
	r      io.ReaderAt
	size   int64
	win    []byte
	winOff int64
}

// windowSize is the size of the reads behind peek and small reads: a
// header or a small segment costs no ReadAt of its own.
const windowSize = 32 << 10

// peek returns up to n bytes at off, fewer only at the end of the input.
func (p *reader) peek(off int64, n int) ([]byte, error) {
	if off >= p.winOff && off+int64(n) <= p.winOff+int64(len(p.win)) {
		return p.win[off-p.winOff:][:n], nil
	}
	if p.win == nil {
		// No larger than the input: an exported key is a few hundred
		// bytes, and Import parses two (a 32 KiB window each was most of
		// its allocations and a tenth of its CPU).
		p.win = make([]byte, min(int64(windowSize), max(p.size, 1)))
	}
	w := p.win[:cap(p.win)]
	if rem := p.size - off; rem < int64(len(w)) {
		w = w[:rem]
	}
	k, err := p.r.ReadAt(w, off)
	if k < len(w) {
		p.win = p.win[:0]
		if err == nil || err == io.EOF {
			return nil, malformed("input shorter than its size")
		}
		return nil, fmt.Errorf("cms: reading input: %w", err)
	}
	p.win, p.winOff = w, off
	if n > len(w) {
		n = len(w)
	}
	return w[:n], nil
}

// read fills b from off: through the window when b is smaller than it,
// straight from the input otherwise.
func (p *reader) read(b []byte, off int64) error {
	if len(b) < windowSize {
		w, err := p.peek(off, len(b))
		if err != nil {
			return err
		}
		if len(w) < len(b) {
			return malformed("input shorter than its size")
		}
		copy(b, w)
		return nil
	}
	k, err := p.r.ReadAt(b, off)
	if k < len(b) {
		if err == nil || err == io.EOF {
			return malformed("input shorter than its size")
		}
		return fmt.Errorf("cms: reading input: %w", err)
	}
	return nil
}

// readAt reads n bytes at off into a new slice; the caller bounds n.
func (p *reader) readAt(off, n int64) ([]byte, error) {
	if off < 0 || n < 0 || off > p.size || n > p.size-off {
		return nil, malformed("truncated")
	}
	b := make([]byte, n)
	k, err := p.r.ReadAt(b, off)
	if int64(k) < n {
		if err == nil || err == io.EOF {
			return nil, malformed("input shorter than its size")
		}
		return nil, fmt.Errorf("cms: reading input: %w", err)
	}
	return b, nil
}

// readTL reads the identifier and length octets at off of an element that
// must end by limit.
func (p *reader) readTL(off, limit int64) (tl, error) {
	if off >= limit {
		return tl{}, malformed("truncated")
	}
	n := int64(10)
	if limit-off < n {
		n = limit - off
	}
	b, err := p.peek(off, int(n))
	if err != nil {
		return tl{}, err
	}
	if len(b) < 2 {
		return tl{}, malformed("truncated")
	}
	t := tl{tag: b[0], off: off}
	if t.tag&0x1f == 0x1f {
		return tl{}, malformed("high tag number")
	}
	switch l := b[1]; {
	case l < 0x80:
		t.hdr, t.n = 2, int64(l)
	case l == 0x80:
		if t.tag&0x20 == 0 {
			return tl{}, malformed("indefinite length on a primitive element")
		}
		t.hdr, t.n = 2, -1
	case l == 0xff:
		return tl{}, malformed("reserved length octet")
	default:
		k := int(l & 0x7f)
		if k > 8 {
			return tl{}, malformed("length of %d octets", k)
		}
		if len(b) < 2+k {
			return tl{}, malformed("truncated")
		}
		var v uint64
		for _, c := range b[2 : 2+k] {
			if v > (1<<62)>>8 {
				return tl{}, malformed("length too large")
			}
			v = v<<8 | uint64(c)
		}
		t.hdr, t.n = int64(2+k), int64(v)
	}
	if t.n > limit-off-t.hdr {
		return tl{}, malformed("length beyond the end of its container")
	}
	return t, nil
}

// expect reads the header of a constructed element with the given tag.
func (p *reader) expect(off int64, f frame, tag byte, what string) (tl, error) {
	t, err := p.readTL(off, f.end)
	if err != nil {
		return tl{}, err
	}
	if t.tag != tag {
		return tl{}, malformed("expected %s, found tag 0x%02x", what, t.tag)
	}
	return t, nil
}

// elem is a small element read whole.
type elem struct {
	tl
	raw      []byte // the whole TLV
	contents []byte
}

// small reads a definite-length element of at most maxSmallElem bytes.
func (p *reader) small(off int64, f frame, tag byte, what string) (elem, error) {
	t, err := p.expect(off, f, tag, what)
	if err != nil {
		return elem{}, err
	}
	if t.n < 0 {
		return elem{}, malformed("indefinite length %s", what)
	}
	if t.n > maxSmallElem {
		return elem{}, unsupported("%s of %d bytes", what, t.n)
	}
	raw, err := p.readAt(t.off, t.hdr+t.n)
	if err != nil {
		return elem{}, err
	}
	return elem{tl: t, raw: raw, contents: raw[t.hdr:]}, nil
}

// atEnd reports whether pos is the end of f's contents.
func (p *reader) atEnd(f frame, pos int64) (bool, error) {
	if !f.indefinite {
		return pos == f.end, nil
	}
	if pos+2 > f.end {
		return false, malformed("truncated")
	}
	b, err := p.peek(pos, 2)
	if err != nil {
		return false, err
	}
	return b[0] == 0 && b[1] == 0, nil
}

// close checks that the contents of f end at pos and returns the offset
// after f.
func (p *reader) close(f frame, pos int64) (int64, error) {
	if !f.indefinite {
		if pos != f.end {
			return 0, malformed("unexpected data at the end of an element")
		}
		return pos, nil
	}
	end, err := p.atEnd(f, pos)
	if err != nil {
		return 0, err
	}
	if !end {
		return 0, malformed("missing end-of-contents")
	}
	return pos + 2, nil
}

// segIter walks the OCTET STRING segments of an encryptedContent.
type segIter struct {
	p     *reader
	first *Range // the single segment of a primitive encryptedContent
	stack []frame
	pos   int64 // after the last element read; after the end when done
}

func newSegIter(p *reader, t tl, parent frame) *segIter {
	it := &segIter{p: p, pos: t.body()}
	if t.tag&0x20 == 0 {
		it.first = &Range{t.body(), t.n}
		it.pos = t.end()
	} else {
		it.stack = []frame{t.enter(parent)}
	}
	return it
}

// run is next's fast path for content in small pieces: while the next
// element is a non-empty primitive OCTET STRING with a short-form length,
// wholly inside the window and its container, it takes it without
// readTL, a few instructions a piece. It copies the contents into b (stopping
// before a piece that does not fit), or with b nil only counts them, and
// returns the number of bytes. Anything else is left to next's general
// loop, which decides the same way for these elements.
func (it *segIter) run(b []byte) int {
	n := len(it.stack)
	if n == 0 {
		return 0
	}
	end := it.stack[n-1].end
	w, base := it.p.win, it.p.winOff
	pos, k := it.pos, 0
	for {
		off := pos - base
		if off < 0 || off+2 > int64(len(w)) {
			break
		}
		l := int64(w[off+1])
		if w[off] != tagOctetString || l == 0 || l >= 0x80 || pos+2+l > end || off+2+l > int64(len(w)) {
			break
		}
		if b != nil {
			if int(l) > len(b)-k {
				break
			}
			if l == 1 {
				b[k] = w[off+2]
			} else {
				copy(b[k:k+int(l)], w[off+2:])
			}
		}
		k += int(l)
		pos += 2 + l
	}
	it.pos = pos
	return k
}

var errDepth = unsupported("encryptedContent nested deeper than %d", maxDepth)

func (it *segIter) next() (Range, bool, error) {
	if it.first != nil {
		r := *it.first
		it.first = nil
		return r, r.Len > 0, nil
	}
	for len(it.stack) > 0 {
		f := it.stack[len(it.stack)-1]
		if !f.indefinite && it.pos == f.end {
			it.stack = it.stack[:len(it.stack)-1]
			continue
		}
		t, err := it.p.readTL(it.pos, f.end)
		if err != nil {
			return Range{}, false, err
		}
		switch {
		case t.tag == tagEOC && f.indefinite:
			if t.n != 0 {
				return Range{}, false, malformed("bad end-of-contents")
			}
			it.pos = t.end()
			it.stack = it.stack[:len(it.stack)-1]
		case t.tag == tagOctetString:
			it.pos = t.end()
			if t.n > 0 {
				return Range{t.body(), t.n}, true, nil
			}
		case t.tag == tagOctetStringCon:
			if len(it.stack) == maxDepth {
				return Range{}, false, errDepth
			}
			it.stack = append(it.stack, t.enter(f))
			it.pos = t.body()
		default:
			return Range{}, false, malformed("unexpected tag 0x%02x in encryptedContent", t.tag)
		}
	}
	return Range{}, false, nil
}
