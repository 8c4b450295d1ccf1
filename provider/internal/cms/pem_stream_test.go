package cms

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
)

var armorSizes = []int{0, 1, 2, 3, 47, 48, 49, 63, 64, 65, 96, 1000, 1 << 20}

// writeChunked writes data to w in chunks whose sizes cycle through sizes.
func writeChunked(t testing.TB, w io.Writer, data []byte, sizes ...int) {
	t.Helper()
	for i := 0; len(data) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(data))
		k, err := w.Write(data[:n])
		require.NoError(t, err)
		require.Equal(t, n, k)
		data = data[n:]
	}
}

// chunkReader returns at most n bytes per Read, 0 meaning all.
type chunkReader struct {
	b []byte
	n int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	if r.n > 0 && len(p) > r.n {
		p = p[:r.n]
	}
	k := copy(p, r.b)
	r.b = r.b[k:]
	return k, nil
}

func unarmorAll(in []byte, chunk int) ([]byte, error) {
	return io.ReadAll(NewUnarmorReader(&chunkReader{in, chunk}))
}

func TestArmorWriter(t *testing.T) {
	chunkings := map[string][]int{
		"whole":   {1 << 30},
		"bytes":   {1},
		"odd":     {7, 13, 1, 47, 49, 3},
		"lines":   {48, 96, 4096},
		"large":   {4097, 65537},
		"empties": {0, 5, 0, 0, 11},
	}
	for _, size := range armorSizes {
		data := randBytes(size)
		want := Armor(data)
		for name, sizes := range chunkings {
			if name == "empties" && size > 1000 {
				continue
			}
			t.Run(fmt.Sprintf("%d/%s", size, name), func(t *testing.T) {
				var buf bytes.Buffer
				w := NewArmorWriter(&buf)
				if name == "empties" {
					// Zero-length writes change nothing.
					_, err := w.Write(nil)
					require.NoError(t, err)
				}
				writeChunked(t, w, data, sizes...)
				require.NoError(t, w.Close())
				require.Equal(t, string(want), buf.String())
				require.NoError(t, w.Close(), "second Close")
				require.Equal(t, string(want), buf.String())
			})
		}
	}
}

func TestArmorWriterErrors(t *testing.T) {
	var buf bytes.Buffer
	w := NewArmorWriter(&buf)
	require.NoError(t, w.Close())
	_, err := w.Write([]byte{1})
	require.Error(t, err)

	// A failing w: the error comes back, and keeps coming back.
	boom := errors.New("disk full")
	for _, limit := range []int{0, 10, 100, 5000} {
		fw := &failWriter{limit: limit, err: boom}
		w := NewArmorWriter(fw)
		var werr error
		for range 100 {
			if _, werr = w.Write(make([]byte, 100)); werr != nil {
				break
			}
		}
		require.ErrorIs(t, werr, boom, "limit %d", limit)
		_, err := w.Write([]byte{1})
		require.ErrorIs(t, err, boom)
		require.ErrorIs(t, w.Close(), boom)
		require.ErrorIs(t, w.Close(), boom)
	}
	// An error on the END line reaches Close.
	fw := &failWriter{limit: len(Armor(make([]byte, 10))) - 3, err: boom}
	w = NewArmorWriter(fw)
	_, err = w.Write(make([]byte, 10))
	require.NoError(t, err)
	require.ErrorIs(t, w.Close(), boom)
}

// failWriter accepts limit bytes, then fails.
type failWriter struct {
	limit int
	err   error
}

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.limit {
		n := w.limit
		w.limit = 0
		return n, w.err
	}
	w.limit -= len(p)
	return len(p), nil
}

func TestUnarmorReader(t *testing.T) {
	for _, size := range armorSizes {
		data := randBytes(size)
		pem := Armor(data)
		for _, chunk := range []int{0, 1, 3, 64, 65, 4097} {
			if chunk == 1 && size > 1000 {
				continue
			}
			got, err := unarmorAll(pem, chunk)
			require.NoError(t, err, "size %d chunk %d", size, chunk)
			require.True(t, bytes.Equal(data, got), "size %d chunk %d", size, chunk)
		}
		if size <= 1000 {
			// iotest.TestReader reads in many patterns and checks the
			// io.Reader contract.
			require.NoError(t, iotest.TestReader(NewUnarmorReader(bytes.NewReader(pem)), data), "size %d", size)
		}
	}
}

// relines rewraps the base64 of pem in lines of n characters (0: one line)
// ending in eol.
func relines(pem []byte, n int, eol string) []byte {
	lines := strings.Split(strings.TrimSpace(string(pem)), "\n")
	b64 := strings.Join(lines[1:len(lines)-1], "")
	var out strings.Builder
	out.WriteString(lines[0] + eol)
	for len(b64) > 0 {
		k := len(b64)
		if n > 0 {
			k = min(n, k)
		}
		out.WriteString(b64[:k] + eol)
		b64 = b64[k:]
	}
	out.WriteString(lines[len(lines)-1] + eol)
	return []byte(out.String())
}

func TestUnarmorReaderForms(t *testing.T) {
	for _, size := range []int{0, 1, 2, 47, 48, 100, 1000, 100000} {
		data := randBytes(size)
		pem := Armor(data)
		noEOL := pem[: len(pem)-1 : len(pem)-1] // appends copy
		forms := map[string][]byte{
			"crlf":           bytes.ReplaceAll(pem, []byte("\n"), []byte("\r\n")),
			"leading ws":     append([]byte(" \r\n\t\n\n"), pem...),
			"trailing ws":    append(bytes.Clone(pem), "\n \t\r\n\r\n  "...),
			"no final eol":   noEOL,
			"one line":       relines(pem, 0, "\n"),
			"one line crlf":  relines(pem, 0, "\r\n"),
			"76 columns":     relines(pem, 76, "\n"), // MIME
			"odd columns":    relines(pem, 3, "\r\n"),
			"1 column":       relines(pem, 1, "\n"),
			"line end ws":    bytes.ReplaceAll(pem, []byte("\n"), []byte(" \t\r\n")),
			"inner ws":       bytes.ReplaceAll(pem, []byte("A"), []byte("A \t")),
			"blank lines":    bytes.ReplaceAll(relines(pem, 64, "\n\n"), []byte("-----\n\n-----"), []byte("-----\n-----")),
			"crlf begin":     bytes.Replace(pem, []byte("-----\n"), []byte("-----\r\n"), 1),
			"crlf end":       append(noEOL, "\r\n"...),
			"spaces begin":   bytes.Replace(pem, []byte("-----\n"), []byte("----- \t \r\n"), 1),
			"spaces end eof": append(noEOL, " \t"...),
		}
		for name, in := range forms {
			want, ok := Unarmor(in)
			require.True(t, ok, "Unarmor rejects %s", name)
			require.True(t, bytes.Equal(data, want))
			for _, chunk := range []int{0, 1, 7, 1000} {
				if chunk == 1 && size > 1000 {
					continue
				}
				got, err := unarmorAll(in, chunk)
				require.NoError(t, err, "%s size %d chunk %d", name, size, chunk)
				require.True(t, bytes.Equal(data, got), "%s size %d chunk %d", name, size, chunk)
			}
		}
	}
}

func TestUnarmorReaderMalformed(t *testing.T) {
	pem := string(Armor([]byte{0x30, 3, 1, 2, 3})) // MAMBAgM=
	body := "MAMBAgM=\n"
	for _, c := range []struct {
		name, in string
		// unarmorOK marks input Unarmor accepts: its encoding/pem search
		// skips lines before the last BEGIN line, and it takes Unicode
		// whitespace after the block.
		unarmorOK bool
	}{
		{name: "empty"},
		{name: "whitespace", in: " \r\n\t\n"},
		{name: "der", in: "\x30\x03\x01\x02\x03"},
		{name: "junk before", in: "junk\n" + pem},
		{name: "begin other type", in: "-----BEGIN PKCS7-----\n" + body + "-----END PKCS7-----\n"},
		{name: "begin type prefix", in: "-----BEGIN CMSX-----\n" + body + "-----END CMSX-----\n"},
		{name: "begin short dashes", in: "-----BEGIN CMS----\n" + body + "-----END CMS-----\n"},
		{name: "begin long dashes", in: "-----BEGIN CMS------\n" + body + "-----END CMS-----\n"},
		{name: "begin junk", in: "-----BEGIN CMS----- x\n" + body + "-----END CMS-----\n"},
		{name: "begin bare cr", in: "-----BEGIN CMS-----\r" + body + "-----END CMS-----\n"},
		{name: "begin cr cr", in: "-----BEGIN CMS-----\r\r\n" + body + "-----END CMS-----\n"},
		{name: "begin eof", in: "-----BEGIN CMS-----"},
		{name: "begin indented", in: "-----BEGIN CMS-----\n  -----BEGIN CMS-----\n" + body + "-----END CMS-----\n"},
		{name: "begin twice", in: "-----BEGIN CMS-----\n" + pem, unarmorOK: true},
		{name: "block before", in: "-----BEGIN CMS-----\nxx\n-----END X-----\n" + pem, unarmorOK: true},
		{name: "encrypted header", in: "-----BEGIN CMS-----\nProc-Type: 4,ENCRYPTED\n\n" + body + "-----END CMS-----\n"},
		{name: "header", in: "-----BEGIN CMS-----\nKey: value\n" + body + "-----END CMS-----\n"},
		{name: "header later", in: "-----BEGIN CMS-----\n" + body + "Key: value\n-----END CMS-----\n"},
		{name: "bad char", in: "-----BEGIN CMS-----\nMAMB*gM=\n-----END CMS-----\n"},
		{name: "nul", in: "-----BEGIN CMS-----\nMAMB\x00AgM=\n-----END CMS-----\n"},
		{name: "utf-8", in: "-----BEGIN CMS-----\nMAMBAgM=é\n-----END CMS-----\n"},
		{name: "url alphabet", in: "-----BEGIN CMS-----\nMA_-\n-----END CMS-----\n"},
		{name: "no padding", in: "-----BEGIN CMS-----\nMAMBAgM\n-----END CMS-----\n"},
		{name: "one char", in: "-----BEGIN CMS-----\nMAMBA\n-----END CMS-----\n"},
		{name: "half padding", in: "-----BEGIN CMS-----\nMA=\n-----END CMS-----\n"},
		{name: "padding first", in: "-----BEGIN CMS-----\n====\n-----END CMS-----\n"},
		{name: "data after padding", in: "-----BEGIN CMS-----\nMA==MAMB\n-----END CMS-----\n"},
		{name: "line after padding", in: "-----BEGIN CMS-----\nMA==\nMAMB\n-----END CMS-----\n"},
		{name: "char after padding", in: "-----BEGIN CMS-----\nMA==\nM\n-----END CMS-----\n"},
		{name: "dash line", in: "-----BEGIN CMS-----\n-MAMB\n-----END CMS-----\n"},
		{name: "no end", in: "-----BEGIN CMS-----\n" + body},
		{name: "no end no eol", in: "-----BEGIN CMS-----\nMAMBAgM="},
		{name: "end other type", in: "-----BEGIN CMS-----\n" + body + "-----END PKCS7-----\n"},
		{name: "end short dashes", in: "-----BEGIN CMS-----\n" + body + "-----END CMS----\n"},
		{name: "end long dashes", in: "-----BEGIN CMS-----\n" + body + "-----END CMS------\n"},
		{name: "end junk", in: "-----BEGIN CMS-----\n" + body + "-----END CMS-----junk\n"},
		{name: "end indented", in: "-----BEGIN CMS-----\n" + body + " -----END CMS-----\n"},
		{name: "end bare cr", in: "-----BEGIN CMS-----\n" + body + "-----END CMS-----\r"},
		{name: "end cr junk", in: "-----BEGIN CMS-----\n" + body + "-----END CMS-----\rx\n"},
		{name: "data after", in: pem + "junk"},
		{name: "data after ws", in: pem + "\n\n  junk\n"},
		{name: "two blocks", in: pem + pem},
		{name: "vertical tab after", in: pem + "\v", unarmorOK: true},
		{name: "nbsp after", in: pem + "\u00a0", unarmorOK: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, chunk := range []int{0, 1, 5} {
				_, err := unarmorAll([]byte(c.in), chunk)
				require.ErrorIs(t, err, ErrMalformed, "chunk %d", chunk)
			}
			_, ok := Unarmor([]byte(c.in))
			require.Equal(t, c.unarmorOK, ok, "Unarmor")
		})
	}

	// Every truncation short of the END line's last dash fails; from there
	// on the block is whole.
	for _, size := range []int{0, 1, 100, 1000} {
		pem := Armor(randBytes(size))
		for i := range len(pem) - 1 {
			_, err := unarmorAll(pem[:i], 0)
			require.ErrorIs(t, err, ErrMalformed, "size %d cut at %d", size, i)
		}
		_, err := unarmorAll(pem[:len(pem)-1], 0)
		require.NoError(t, err)
	}
}

func TestUnarmorReaderMessages(t *testing.T) {
	for in, want := range map[string]string{
		"":                         "cms: malformed message: PEM line 1: no BEGIN CMS line",
		"\n\n-----BEGIN X509-----": "cms: malformed message: PEM line 3: PEM type is not CMS",
		"-----BEGIN CMS-----\nKey: value\n-----END CMS-----\n":   "cms: malformed message: PEM line 2: PEM headers are not supported",
		"-----BEGIN CMS-----\nMAMB\nAg*=\n-----END CMS-----\n":   "cms: malformed message: PEM line 3: invalid base64",
		"-----BEGIN CMS-----\nMAMB\nAgM=\n":                      "cms: malformed message: PEM line 3: truncated: no END CMS line",
		"-----BEGIN CMS-----\nMAMB\n-----END PKCS7-----\n":       "cms: malformed message: PEM line 3: END line type is not CMS",
		"-----BEGIN CMS-----\nMAMB\n-----END CMS-----\n\nx\n":    "cms: malformed message: PEM line 5: data after END line",
		"-----BEGIN CMS-----\nMAMBA\n-----END CMS-----\n":        "cms: malformed message: PEM line 3: truncated base64",
		"-----BEGIN CMS-----\nMA==\nMAMB\n-----END CMS-----\n":   "cms: malformed message: PEM line 3: base64 after padding",
		"-----BEGIN CMS-----\r\nMAMB\r\n-----BEGIN CMS-----\r\n": "cms: malformed message: PEM line 3: neither base64 nor an END line",
	} {
		_, err := unarmorAll([]byte(in), 0)
		require.EqualError(t, err, want, "%q", in)
	}
}

func TestUnarmorReaderReadError(t *testing.T) {
	boom := errors.New("connection reset")
	pem := Armor(randBytes(1000))
	r := NewUnarmorReader(io.MultiReader(bytes.NewReader(pem[:500]), iotest.ErrReader(boom)))
	got, err := io.ReadAll(r)
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, ErrMalformed)
	require.NotEmpty(t, got, "bytes before the error are returned")
	_, err = r.Read(make([]byte, 10))
	require.ErrorIs(t, err, boom, "errors are sticky")

	// A reader that returns data with its error.
	r = NewUnarmorReader(iotest.DataErrReader(bytes.NewReader(pem)))
	_, err = io.ReadAll(r)
	require.NoError(t, err)

	// A reader that never makes progress.
	_, err = io.ReadAll(NewUnarmorReader(zeroReader{}))
	require.ErrorIs(t, err, io.ErrNoProgress)
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

// TestArmorStreamMemory streams 256 MiB through NewArmorWriter and
// NewUnarmorReader and checks that neither holds on to it.
func TestArmorStreamMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 256 MiB")
	}
	const total = 256 << 20
	const limit = 16 << 20
	pr, pw := io.Pipe()
	sent := make(chan []byte, 1)
	go func() {
		h := sha256.New()
		w := NewArmorWriter(pw)
		src := rand.NewChaCha8([32]byte{1})
		buf := make([]byte, 65521) // prime, so writes and lines do not align
		var err error
		for off := 0; off < total && err == nil; off += len(buf) {
			b := buf[:min(len(buf), total-off)]
			_, _ = src.Read(b)
			h.Write(b)
			_, err = w.Write(b)
		}
		if err == nil {
			err = w.Close()
		}
		pw.CloseWithError(err)
		sent <- h.Sum(nil)
	}()

	runtime.GC()
	var peak uint64
	var ms runtime.MemStats
	h := sha256.New()
	r := NewUnarmorReader(pr)
	buf := make([]byte, 100003)
	n, next := 0, 0
	for {
		k, err := r.Read(buf)
		h.Write(buf[:k])
		n += k
		if n >= next {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			next += total / 5
		}
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
	}
	require.Equal(t, total, n)
	require.Equal(t, <-sent, h.Sum(nil))
	runtime.ReadMemStats(&ms)
	peak = max(peak, ms.HeapInuse)
	t.Logf("peak heap in use %.1f MiB", float64(peak)/(1<<20))
	require.Less(t, peak, uint64(limit))
}

// TestUnarmorReaderOpenSSL checks both directions against openssl cms.
func TestUnarmorReaderOpenSSL(t *testing.T) {
	opensslCmd(t)
	kek, id := randBytes(32), []byte("kek")
	args := append([]string{"-aes-256-gcm"}, secretKeyArgs(kek, id)...)
	for _, size := range []int{0, 1, 100000} {
		pt := randBytes(size)
		pem := opensslEncrypt(t, pt, append(args, "-outform", "PEM")...)
		want, ok := Unarmor(pem)
		require.True(t, ok)
		got, err := unarmorAll(pem, 0)
		require.NoError(t, err)
		require.Equal(t, want, got)

		// OpenSSL reads what NewArmorWriter writes.
		der := opensslEncrypt(t, pt, append(args, "-outform", "DER")...)
		dir := t.TempDir()
		in, out := filepath.Join(dir, "in.pem"), filepath.Join(dir, "out.der")
		f, err := os.Create(in)
		require.NoError(t, err)
		w := NewArmorWriter(f)
		writeChunked(t, w, der, 1000)
		require.NoError(t, w.Close())
		require.NoError(t, f.Close())
		require.NoError(t, runOpenSSL(t, "cms", "-cmsout", "-inform", "PEM", "-in", in, "-outform", "DER", "-out", out))
		again, err := os.ReadFile(out)
		require.NoError(t, err)
		require.Equal(t, der, again)
	}
}

// oneBlock reports whether in has one BEGIN and one END marker and only
// ASCII whitespace after the last dashes: there Unarmor's extra leniency
// (see NewUnarmorReader) cannot apply.
func oneBlock(in []byte) bool {
	i := bytes.LastIndex(in, []byte("-----"))
	return bytes.Count(in, []byte("-----BEGIN")) == 1 && bytes.Count(in, []byte("-----END")) == 1 &&
		i >= 0 && len(bytes.Trim(in[i+5:], " \t\r\n")) == 0
}

// FuzzUnarmorReader checks, for any input and any read sizes:
//   - the reader does not panic, and every error wraps ErrMalformed;
//   - whether it accepts does not depend on how r splits the input;
//   - what it accepts Unarmor accepts, with the same bytes;
//   - where Unarmor accepts and oneBlock holds, the reader accepts too;
//   - the input itself, written through NewArmorWriter in chunks, comes out
//     as Armor writes it and reads back unchanged.
func FuzzUnarmorReader(f *testing.F) {
	for _, size := range []int{0, 1, 5, 48, 100} {
		pem := Armor(bytes.Repeat([]byte{0x30, 0x80, 0xff}, size)[:size])
		f.Add(pem, uint16(0))
		f.Add(bytes.ReplaceAll(pem, []byte("\n"), []byte("\r\n")), uint16(1))
		f.Add(relines(pem, 5, "\n"), uint16(7))
		f.Add(pem[:len(pem)/2], uint16(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, chunk uint16) {
		got, err := unarmorAll(in, int(chunk))
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
		_, errWhole := unarmorAll(in, 0)
		if (err == nil) != (errWhole == nil) {
			t.Fatalf("read in chunks of %d: %v; whole: %v", chunk, err, errWhole)
		}
		want, ok := Unarmor(in)
		if err == nil && (!ok || !bytes.Equal(got, want)) {
			t.Fatalf("reader gives %x; Unarmor %x, %v", got, want, ok)
		}
		if err != nil && ok && oneBlock(in) {
			t.Fatalf("reader rejects what Unarmor accepts: %v", err)
		}

		var buf bytes.Buffer
		w := NewArmorWriter(&buf)
		writeChunked(t, w, in, int(chunk)%100+1, 48, int(chunk)%7)
		require.NoError(t, w.Close())
		if !bytes.Equal(buf.Bytes(), Armor(in)) {
			t.Fatalf("writer output differs from Armor")
		}
		back, err := unarmorAll(buf.Bytes(), int(chunk))
		require.NoError(t, err)
		require.True(t, bytes.Equal(in, back))
	})
}

func ExampleNewArmorWriter() {
	w := NewArmorWriter(os.Stdout)
	_, _ = io.WriteString(w, "any number of writes, ")
	_, _ = io.WriteString(w, "of any size")
	_ = w.Close()
	// Output:
	// -----BEGIN CMS-----
	// YW55IG51bWJlciBvZiB3cml0ZXMsIG9mIGFueSBzaXpl
	// -----END CMS-----
}
