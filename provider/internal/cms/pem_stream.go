package cms

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
)

// Streaming PEM (RFC 7468) for messages too large to hold in memory. The
// writer matches encoding/pem byte for byte; the reader accepts a subset of
// what Unarmor accepts (see FuzzUnarmorReader for the exact relation).

const (
	beginLine = "-----BEGIN " + pemType + "-----"
	endLine   = "-----END " + pemType + "-----"

	lineBytes = 48   // input bytes per 64-column base64 line
	armorLine = 65   // 64 base64 characters and '\n'
	armorBuf  = 4096 // flush the writer's output at about this size
	streamBuf = 32 << 10
)

var errArmorClosed = errors.New("cms: write to closed armor writer")

// NewArmorWriter returns a WriteCloser that writes everything written to it
// to w as one PEM block of type "CMS": the BEGIN line, base64 in 64-column
// lines, and, on Close, the last line and the END line. Its output is
// byte-for-byte what Armor gives for the same bytes. Close does not close w.
// Errors from w are returned.
//
// The writer keeps fewer than 48 bytes of input between calls and writes
// to w in pieces of at most about 4 KiB. After an error from w every call
// returns that error. Close may be called more than once. It is not safe for
// concurrent use.
func NewArmorWriter(w io.Writer) io.WriteCloser {
	return &armorWriter{w: w, out: make([]byte, 0, armorBuf+armorLine+len(beginLine)+1)}
}

type armorWriter struct {
	w      io.Writer
	out    []byte // encoded output not yet written to w
	pend   [lineBytes]byte
	npend  int
	begun  bool
	closed bool
	err    error
}

func (a *armorWriter) Write(p []byte) (int, error) {
	if a.err != nil {
		return 0, a.err
	}
	if a.closed {
		return 0, errArmorClosed
	}
	if !a.begun {
		a.out = append(a.out, beginLine+"\n"...)
		a.begun = true
	}
	total, written := len(p), 0
	for len(p) > 0 {
		if a.npend > 0 || len(p) < lineBytes {
			k := copy(a.pend[a.npend:], p)
			a.npend += k
			p = p[k:]
			if a.npend < lineBytes {
				break
			}
			a.appendLine(a.pend[:])
			a.npend = 0
		}
		for len(p) >= lineBytes && len(a.out) < armorBuf {
			a.appendLine(p[:lineBytes])
			p = p[lineBytes:]
		}
		if len(a.out) >= armorBuf {
			if err := a.flush(); err != nil {
				return written, err
			}
			written = total - len(p)
		}
	}
	if err := a.flush(); err != nil {
		return written, err
	}
	return total, nil
}

// Close writes the last base64 line, if any, and the END line.
func (a *armorWriter) Close() error {
	if a.closed || a.err != nil {
		return a.err
	}
	a.closed = true
	if !a.begun {
		a.out = append(a.out, beginLine+"\n"...)
		a.begun = true
	}
	if a.npend > 0 {
		a.appendLine(a.pend[:a.npend])
		a.npend = 0
	}
	a.out = append(a.out, endLine+"\n"...)
	return a.flush()
}

func (a *armorWriter) appendLine(b []byte) {
	a.out = base64.StdEncoding.AppendEncode(a.out, b)
	a.out = append(a.out, '\n')
}

func (a *armorWriter) flush() error {
	if len(a.out) == 0 {
		return nil
	}
	if _, err := a.w.Write(a.out); err != nil {
		a.err = err
		return err
	}
	a.out = a.out[:0]
	return nil
}

// NewUnarmorReader returns a Reader of the bytes inside one PEM block of type
// "CMS" read from r, decoding as it goes (bounded memory). It accepts what
// Armor/NewArmorWriter and `openssl cms -outform PEM` write: optional leading
// whitespace, LF or CRLF line ends, any line length. Malformed armour gives
// an error wrapping ErrMalformed when it is reached: a wrong or missing BEGIN
// line or type, PEM headers ("Key: value" lines), invalid base64, a missing
// END line (truncation), a mismatched END type, or anything but whitespace
// after END.
//
// The reader returns io.EOF only after it has read r to its end and found
// nothing but whitespace after the END line. Bytes returned before an error
// come from a block that turned out to be malformed: callers must discard
// them. Errors from r are returned as they are. The reader holds about
// 64 KiB and is not safe for concurrent use.
//
// Whatever it accepts, Unarmor accepts too and decodes to the same bytes.
// It is stricter than Unarmor in that the block must be the first thing in
// r and only spaces, tabs, CR and LF may follow it.
func NewUnarmorReader(r io.Reader) io.Reader {
	return &unarmorReader{r: r, buf: make([]byte, streamBuf), outBuf: make([]byte, streamBuf), line: 1}
}

// Reader states, in the order the parts of a block come.
const (
	stLead      = iota // whitespace before the BEGIN line
	stBegin            // inside "-----BEGIN CMS-----"
	stBeginTail        // spaces and tabs ending the BEGIN line
	stBeginCR          // CR ending the BEGIN line; LF must follow
	stLineStart        // start of a base64 or END line
	stBody             // inside a base64 line
	stEnd              // inside "-----END CMS-----"
	stEndTail          // spaces and tabs ending the END line
	stEndCR            // CR ending the END line; LF must follow
	stTrailer          // whitespace after the END line
)

type unarmorReader struct {
	r       io.Reader
	buf     []byte // input buffer
	in      []byte // input not yet looked at, in buf
	outBuf  []byte
	out     []byte // decoded bytes not yet returned, in outBuf
	eof     bool   // r returned io.EOF
	readErr error  // r returned this other error
	err     error  // sticky result: io.EOF or the first error

	state  int
	match  int // bytes of beginLine or endLine seen
	line   int // line number for messages
	quad   [4]byte
	nquad  int  // base64 characters of a quantum split between lines
	padded bool // the last quantum had '=' padding
}

func (r *unarmorReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for len(r.out) == 0 && r.err == nil {
		r.step()
	}
	if len(r.out) > 0 {
		n := copy(p, r.out)
		r.out = r.out[n:]
		return n, nil
	}
	return 0, r.err
}

// step reads more input or decodes all that is buffered.
func (r *unarmorReader) step() {
	if len(r.in) == 0 {
		switch {
		case r.readErr != nil:
			r.err = r.readErr
		case r.eof:
			r.err = r.atEOF()
		default:
			r.fill()
		}
		return
	}
	r.out = r.outBuf[:0]
	if err := r.process(); err != nil {
		r.err = err
	}
}

func (r *unarmorReader) fill() {
	for range 100 {
		n, err := r.r.Read(r.buf)
		r.in = r.buf[:n]
		if err == io.EOF {
			r.eof = true
		} else if err != nil {
			r.readErr = err
		}
		if n > 0 || err != nil {
			return
		}
	}
	r.readErr = io.ErrNoProgress
}

func (r *unarmorReader) atEOF() error {
	switch r.state {
	case stEndTail, stTrailer:
		return io.EOF
	case stLead:
		return r.malformed("no BEGIN CMS line")
	case stEnd:
		return r.malformed("truncated END line")
	case stEndCR:
		return r.malformed("stray CR after END line")
	}
	return r.malformed("truncated: no END CMS line")
}

func (r *unarmorReader) malformed(msg string) error {
	return malformed("PEM line %d: %s", r.line, msg)
}

// process consumes r.in, appending decoded bytes to r.out. r.out cannot
// overflow: len(r.in) base64 characters and 3 carried over decode to at
// most len(r.buf) bytes.
func (r *unarmorReader) process() error {
	for len(r.in) > 0 {
		switch r.state {
		case stLead:
			switch r.in[0] {
			case '\n':
				r.line++
				fallthrough
			case ' ', '\t', '\r':
				r.in = r.in[1:]
			default:
				r.state, r.match = stBegin, 0
			}
		case stBegin:
			done, ok := r.matchLine(beginLine)
			switch {
			case !ok && r.match < len("-----BEGIN "):
				return r.malformed("no BEGIN CMS line")
			case !ok:
				return r.malformed("PEM type is not CMS")
			case done:
				r.state = stBeginTail
			}
		case stBeginTail, stEndTail:
			c := r.in[0]
			r.in = r.in[1:]
			switch {
			case c == ' ' || c == '\t':
			case c == '\r':
				r.state++
			case c == '\n':
				r.state += 2
				if r.state == stTrailer {
					r.line++
				}
			case r.state == stBeginTail:
				return r.malformed("PEM type is not CMS")
			default:
				return r.malformed("junk after END line")
			}
		case stBeginCR, stEndCR:
			if r.in[0] != '\n' {
				return r.malformed("stray CR")
			}
			r.in = r.in[1:]
			r.state++
			if r.state == stTrailer {
				r.line++
			}
		case stLineStart:
			r.line++
			if r.in[0] == '-' {
				r.state, r.match = stEnd, 0
			} else {
				r.state = stBody
			}
		case stBody:
			seg := r.in
			i := bytes.IndexByte(seg, '\n')
			if i >= 0 {
				seg = seg[:i]
				r.in = r.in[i+1:]
				r.state = stLineStart
			} else {
				r.in = nil
			}
			if err := r.decode(seg); err != nil {
				return err
			}
		case stEnd:
			done, ok := r.matchLine(endLine)
			switch {
			case !ok && r.match < len("-----END "):
				return r.malformed("neither base64 nor an END line")
			case !ok:
				return r.malformed("END line type is not CMS")
			case done && r.nquad != 0:
				return r.malformed("truncated base64")
			case done:
				r.state = stEndTail
			}
		case stTrailer:
			switch r.in[0] {
			case '\n':
				r.line++
				r.in = r.in[1:]
			case ' ', '\t', '\r':
				r.in = r.in[1:]
			default:
				return r.malformed("data after END line")
			}
		}
	}
	return nil
}

// matchLine consumes the bytes of r.in that continue pat from r.match. It
// reports whether all of pat has been seen, and false for ok on a mismatch.
func (r *unarmorReader) matchLine(pat string) (done, ok bool) {
	for len(r.in) > 0 && r.match < len(pat) {
		if r.in[0] != pat[r.match] {
			return false, false
		}
		r.in = r.in[1:]
		r.match++
	}
	return r.match == len(pat), true
}

// decode decodes seg, a base64 line or part of one, in place of its spaces,
// tabs and CRs. Like encoding/pem it ignores those anywhere, and quanta may
// span lines.
func (r *unarmorReader) decode(seg []byte) error {
	if bytes.IndexByte(seg, ' ') >= 0 || bytes.IndexByte(seg, '\t') >= 0 || bytes.IndexByte(seg, '\r') >= 0 {
		n := 0
		for _, c := range seg {
			if c != ' ' && c != '\t' && c != '\r' {
				seg[n] = c
				n++
			}
		}
		seg = seg[:n]
	}
	if r.nquad > 0 && len(seg) > 0 {
		k := copy(r.quad[r.nquad:], seg)
		r.nquad += k
		if r.nquad < len(r.quad) {
			return nil
		}
		r.nquad = 0
		if err := r.decodeQuanta(r.quad[:], seg); err != nil {
			return err
		}
		seg = seg[k:]
	}
	whole := len(seg) &^ 3
	if whole > 0 {
		if err := r.decodeQuanta(seg[:whole], seg); err != nil {
			return err
		}
	}
	if rest := seg[whole:]; len(rest) > 0 {
		if r.padded {
			return r.malformed("base64 after padding")
		}
		r.nquad = copy(r.quad[:], rest)
	}
	return nil
}

// decodeQuanta decodes whole base64 quanta src, taken from line, to r.out.
func (r *unarmorReader) decodeQuanta(src, line []byte) error {
	if r.padded {
		return r.malformed("base64 after padding")
	}
	n, err := base64.StdEncoding.Decode(r.outBuf[len(r.out):cap(r.outBuf)], src)
	if err != nil {
		if bytes.IndexByte(line, ':') >= 0 {
			return r.malformed("PEM headers are not supported")
		}
		return r.malformed("invalid base64")
	}
	r.out = r.outBuf[:len(r.out)+n]
	r.padded = src[len(src)-1] == '='
	return nil
}
