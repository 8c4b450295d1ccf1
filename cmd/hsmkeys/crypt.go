package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hsmkeys/hsmkeys/provider"
)

var encryptSpec = spec{
	path:  "encrypt",
	usage: "encrypt --kek NAME [--kek NAME...] [--context k=v...] [--der|--pem] [-i IN] [-o OUT | FILE... [-j N]]",
	about: `Encrypts IN (default stdin) to OUT (default stdout) as a CMS
AuthEnvelopedData: a fresh session key per message, made on the token,
wrapped for each KEK named (an RSA KEK imported with 'kek import-public'
lets its owner decrypt with openssl cms), used for AES-256-GCM on the token
and destroyed. The encryption context (--context) is authenticated with the
message and must be given again to decrypt. OUT is written atomically, mode
0600; an interrupted run leaves no partial file. With FILE operands instead
of -i/-o, each FILE is encrypted to FILE.cms, up to N files at once.`,
	examples: `hsmkeys encrypt --kek backup -i db.dump -o db.dump.cms
tar c data | hsmkeys encrypt --kek backup --context host=db1 --pem > data.tar.pem
hsmkeys encrypt --kek backup logs/*.log          # logs/a.log.cms, ...
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' encrypt --kek partner -i report.pdf -o report.cms`,
}

var decryptSpec = spec{
	path:  "decrypt",
	usage: "decrypt [--context k=v...] [-i IN] [-o OUT | FILE.cms... [-j N]]",
	about: `Decrypts a message made by 'hsmkeys encrypt' (or by openssl cms for a
recipient whose KEK is on this token), DER or PEM, from IN (default stdin)
to OUT (default stdout). OUT is written atomically, mode 0600, only once
the whole message authenticates; an existing OUT is left untouched when
decryption fails, and a link as OUT is refused. A message over 4 MiB is
read twice; if IN changes in between, decrypt fails, and stdout has then
received at most a prefix of the authenticated plaintext (incomplete:
discard it on exit status 1), never a byte of the changed data. From a
pipe, IN is first copied to an unnamed file in $TMPDIR, as large as the
message. The --context pairs must be those the message was made with.
With FILE.cms operands instead of -i/-o, each is decrypted to FILE, up to
N files at once.`,
	examples: `hsmkeys decrypt -i db.dump.cms -o db.dump
hsmkeys decrypt --context host=db1 < data.tar.pem | tar x
hsmkeys decrypt logs/*.log.cms                   # logs/a.log, ...
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' decrypt -i report.cms -o report.pdf`,
}

func (c *cli) cmdEncrypt(ctx context.Context, args []string) error {
	fs := c.newFlags(encryptSpec)
	var kekNames listFlag
	ectx := contextFlag{}
	var armor armorFlags
	fs.Var(&kekNames, "kek", "wrap the message key for the KEK `NAME` (repeatable)")
	fs.Var(ectx, "context", "bind the encryption context `k=v` (repeatable)")
	in := fs.String("i", "", "read from `FILE` instead of stdin")
	out := fs.String("o", "", "write to `FILE` instead of stdout")
	workers := fs.Int("j", maxRewrapWorkers, "with FILE operands, encrypt up to `N` files at once")
	armor.add(fs, false)
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(kekNames) == 0 {
		return usagef(fs.spec.path, "encrypt needs --kek NAME")
	}
	if len(operands) > 0 {
		if err := batchArgs(fs, *in, *out, *workers); err != nil {
			return err
		}
		if err := armor.check(fs); err != nil {
			return err
		}
		return c.encryptFiles(ctx, operands, kekNames, provider.Options{Context: ectx, Armor: armor.pem}, *workers)
	}
	if err := firstErr(armor.check(fs), c.refuseBinaryToTerminal(*out, armor.pem), c.dataToStdout(fs, *out)); err != nil {
		return err
	}
	src, size, closeIn, err := c.openInput(ctx, *in)
	if err != nil {
		return err
	}
	defer closeIn()
	p, err := c.openProvider(ctx, provider.ExportTrusted, 0)
	if err != nil {
		return err
	}
	defer p.Close()
	keks, err := resolveKEKs(ctx, p, kekNames)
	if err != nil {
		return err
	}
	o, err := c.createOutput(*out, 0o600)
	if err != nil {
		return err
	}
	defer o.abort()
	prog := c.newProgress()
	counted := &countingReader{r: src, total: size, verb: "encrypting", p: prog}
	if size >= 0 && size < largeFile {
		counted.p = nil
	}
	w := &countingWriter{w: o}
	err = p.Encrypt(ctx, w, counted, size, keks, provider.Options{Context: ectx, Armor: armor.pem})
	prog.clear()
	if err == nil {
		err = o.commit()
	}
	if err != nil {
		return err
	}
	prog.finish("encrypted", counted.n.Load())
	if c.json {
		return c.writeJSON(map[string]any{"file": *out, "bytes_in": counted.n.Load(), "bytes_out": w.n,
			"format": formatName(armor.pem), "keks": keksToJSON(keks), "context": nonNil(ectx)})
	}
	return nil
}

func (c *cli) cmdDecrypt(ctx context.Context, args []string) error {
	fs := c.newFlags(decryptSpec)
	ectx := contextFlag{}
	fs.Var(ectx, "context", "the encryption context `k=v` the message was made with (repeatable)")
	in := fs.String("i", "", "read from `FILE` instead of stdin")
	out := fs.String("o", "", "write to `FILE` instead of stdout")
	workers := fs.Int("j", maxRewrapWorkers, "with FILE operands, decrypt up to `N` files at once")
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(operands) > 0 {
		if err := batchArgs(fs, *in, *out, *workers); err != nil {
			return err
		}
		for _, f := range operands {
			if !strings.HasSuffix(f, batchSuffix) || len(f) == len(batchSuffix) {
				return usagef(fs.spec.path, "%s: decrypting files by name needs names ending in %s (or use -i and -o)", f, batchSuffix)
			}
		}
		return c.decryptFiles(ctx, operands, provider.Options{Context: ectx}, *workers)
	}
	if err := c.dataToStdout(fs, *out); err != nil {
		return err
	}
	src, size, cleanup, err := c.openInputAt(ctx, *in)
	if err != nil {
		return err
	}
	defer cleanup()
	p, err := c.openProvider(ctx, provider.ExportTrusted, 0)
	if err != nil {
		return err
	}
	defer p.Close()
	o, err := c.createOutput(*out, 0o600)
	if err != nil {
		return err
	}
	defer o.abort()
	prog := c.newProgress()
	if size < largeFile {
		prog = nil
	}
	counted := &countingReaderAt{ra: src, c: &countingReader{total: size * 2, passes: []string{"verifying", "decrypting"}, p: prog}}
	w := &countingWriter{w: o}
	err = p.Decrypt(ctx, w, counted, size, provider.Options{Context: ectx})
	prog.clear()
	if err == nil {
		err = o.commit()
	}
	if err != nil && w.n > 0 && (*out == "" || *out == "-") {
		// Decrypt writes only authenticated plaintext, but stdout cannot be
		// taken back: say that it got an incomplete prefix.
		err = withHint(err, "stdout received the first %d bytes of the plaintext, not all of it: discard them", w.n)
	}
	if err != nil {
		return kekNotFound(err)
	}
	prog.finish("decrypted", size)
	if c.json {
		return c.writeJSON(map[string]any{"file": *out, "bytes": w.n})
	}
	return nil
}

// batchSuffix is what encrypt adds to a FILE operand and decrypt removes.
const batchSuffix = ".cms"

func batchArgs(fs *flags, in, out string, workers int) error {
	switch {
	case in != "" || out != "":
		return usagef(fs.spec.path, "FILE operands and -i/-o exclude each other")
	case workers < 1:
		return usagef(fs.spec.path, "-j %d: want at least 1", workers)
	}
	return nil
}

// encryptFiles encrypts each file to file.cms, n at a time: independent
// messages, each with its own session key, run in parallel on the pool.
func (c *cli) encryptFiles(ctx context.Context, files []string, kekNames []string, o provider.Options, workers int) error {
	files, err := uniqueFiles(files)
	if err != nil {
		return err
	}
	n := min(len(files), workers)
	p, err := c.openProvider(ctx, provider.ExportTrusted, n+1)
	if err != nil {
		return err
	}
	defer p.Close()
	keks, err := resolveKEKs(ctx, p, kekNames)
	if err != nil {
		return err
	}
	results := c.eachFile(ctx, files, n, "encrypted", func(ctx context.Context, file string) (string, error) {
		target := file + batchSuffix
		return target, transformFile(file, target, func(dst io.Writer, src *os.File, size int64) error {
			return p.Encrypt(ctx, dst, src, size, keks, o)
		})
	})
	return c.reportFiles(ctx, results, "encrypted", "no output left for them")
}

// decryptFiles decrypts each file.cms to file, n at a time. A large
// message holds two sessions while its tag is checked.
func (c *cli) decryptFiles(ctx context.Context, files []string, o provider.Options, workers int) error {
	files, err := uniqueFiles(files)
	if err != nil {
		return err
	}
	n := min(len(files), workers)
	p, err := c.openProvider(ctx, provider.ExportTrusted, 2*n+1)
	if err != nil {
		return err
	}
	defer p.Close()
	results := c.eachFile(ctx, files, n, "decrypted", func(ctx context.Context, file string) (string, error) {
		target := strings.TrimSuffix(file, batchSuffix)
		return target, transformFile(file, target, func(dst io.Writer, src *os.File, size int64) error {
			return p.Decrypt(ctx, dst, src, size, o)
		})
	})
	return c.reportFiles(ctx, results, "decrypted", "no output left for them")
}

// transformFile runs fn from the file in to a new file out, written
// atomically (mode 0600): on failure out is as it was.
func transformFile(in, out string, fn func(dst io.Writer, src *os.File, size int64) error) error {
	src, err := os.Open(in)
	if err != nil {
		return err
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", in)
	}
	o, err := createFile(out, 0o600)
	if err != nil {
		return err
	}
	defer o.abort()
	bw := bufio.NewWriterSize(o, 256<<10)
	if err := fn(bw, src, st.Size()); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return o.commit()
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// openInput opens the input of encrypt: a file with its size, or stdin
// (size -1: the message is then streamed as indefinite-length BER).
func (c *cli) openInput(ctx context.Context, path string) (io.Reader, int64, func(), error) {
	if path == "" || path == "-" {
		return newCtxReader(ctx, c.stdin), provider.UnknownSize, func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, nil, err
	}
	if !st.Mode().IsRegular() {
		// A pipe or a device: its size is unknown and reads may block.
		return newCtxReader(ctx, f), provider.UnknownSize, func() { f.Close() }, nil
	}
	return f, st.Size(), func() { f.Close() }, nil
}

// openInputAt opens the input of decrypt, which reads the message at
// random offsets: a regular file as it is (stdin too, from its current
// offset); a pipe, a FIFO or a device is copied first (ciphertext only) to
// a file with no name in $TMPDIR, which needs as much free space as the
// message and which the kernel frees when hsmkeys exits, even by SIGKILL.
func (c *cli) openInputAt(ctx context.Context, path string) (io.ReaderAt, int64, func(), error) {
	var src io.Reader
	closeSrc := func() {}
	if path == "" || path == "-" {
		if f, ok := c.stdin.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
				if off, err := f.Seek(0, io.SeekCurrent); err == nil && off <= st.Size() {
					return io.NewSectionReader(f, off, st.Size()-off), st.Size() - off, func() {}, nil
				}
			}
		}
		src = c.stdin
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, 0, nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, 0, nil, err
		}
		if st.Mode().IsRegular() {
			return f, st.Size(), func() { f.Close() }, nil
		}
		src, closeSrc = f, func() { f.Close() }
	}
	defer closeSrc()
	spool, err := openSpool()
	if err != nil {
		return nil, 0, nil, fmt.Errorf("a file to copy the input to, in %s: %w", os.TempDir(), err)
	}
	cleanup := func() { spool.Close() }
	prog := c.newProgress()
	n, err := io.Copy(spool, &countingReader{r: newCtxReader(ctx, src), verb: "input copied to an unnamed file in " + os.TempDir() + ":", p: prog})
	prog.clear()
	if err != nil {
		cleanup()
		return nil, 0, nil, fmt.Errorf("reading the input: %w", err)
	}
	return spool, n, cleanup, nil
}

// openSpool is a temporary file with no name in $TMPDIR: O_TMPFILE where
// the file system has it, else a file removed as soon as it is made.
func openSpool() (*os.File, error) {
	if f, err := openUnnamed(os.TempDir(), 0o600); err == nil {
		return f, nil
	}
	f, err := os.CreateTemp("", "hsmkeys-in-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// countingWriter counts what the provider wrote.
type countingWriter struct {
	w io.Writer
	n int64
}

func (w *countingWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.n += int64(n)
	return n, err
}
