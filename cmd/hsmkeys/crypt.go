package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/hsmkeys/hsmkeys/provider"
)

var encryptSpec = spec{
	path:  "encrypt",
	usage: "encrypt --kek NAME [--kek NAME...] [--context k=v...] [-i IN] [-o OUT] [--der|--pem]",
	about: `Encrypts IN (default stdin) to OUT (default stdout) as a CMS
AuthEnvelopedData: a fresh session key per message, made on the token,
wrapped for each KEK named (an RSA KEK imported with 'kek import-public'
lets its owner decrypt with openssl cms), used for AES-256-GCM on the token
and destroyed. The encryption context (--context) is authenticated with the
message and must be given again to decrypt. OUT is written atomically, mode
0600; an interrupted run leaves no partial file.`,
	examples: `hsmkeys encrypt --kek backup -i db.dump -o db.dump.cms
tar c data | hsmkeys encrypt --kek backup --context host=db1 --pem > data.tar.pem
hsmkeys --uri 'pkcs11:token=hsmkeys?module-path=/usr/lib/softhsm/libsofthsm2.so' encrypt --kek partner -i report.pdf -o report.cms`,
}

var decryptSpec = spec{
	path:  "decrypt",
	usage: "decrypt [--context k=v...] [-i IN] [-o OUT]",
	about: `Decrypts a message made by 'hsmkeys encrypt' (or by openssl cms for a
recipient whose KEK is on this token), DER or PEM, from IN (default stdin)
to OUT (default stdout). Nothing is written unless the whole message
authenticates; OUT is written atomically, mode 0600, and an existing OUT is
left untouched when decryption fails. The --context pairs must be those the
message was made with.`,
	examples: `hsmkeys decrypt -i db.dump.cms -o db.dump
hsmkeys decrypt --context host=db1 < data.tar.pem | tar x
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
	armor.add(fs, false)
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
	}
	if len(kekNames) == 0 {
		return usagef(fs.spec.path, "encrypt needs --kek NAME")
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
	counted := &countingReader{r: src, total: size, verb: "encrypted", p: prog}
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
	c.pinFlags(fs, false)
	operands, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := noOperands(fs, operands); err != nil {
		return err
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
	counted := &countingReaderAt{ra: src, c: &countingReader{total: size * 2, verb: "read (two passes)", p: prog}}
	w := &countingWriter{w: o}
	err = p.Decrypt(ctx, w, counted, size, provider.Options{Context: ectx})
	prog.clear()
	if err == nil {
		err = o.commit()
	}
	if err != nil {
		return kekNotFound(err)
	}
	if c.json {
		return c.writeJSON(map[string]any{"file": *out, "bytes": w.n})
	}
	return nil
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
		return newCtxReader(ctx, c.stdin), -1, func() {}, nil
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
		return newCtxReader(ctx, f), -1, func() { f.Close() }, nil
	}
	return f, st.Size(), func() { f.Close() }, nil
}

// openInputAt opens the input of decrypt, which reads the message at
// random offsets: a regular file as it is; stdin, a pipe or a device
// spooled to a temporary file first (ciphertext only), removed afterwards.
func (c *cli) openInputAt(ctx context.Context, path string) (io.ReaderAt, int64, func(), error) {
	var src io.Reader
	closeSrc := func() {}
	if path == "" || path == "-" {
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
	spool, err := os.CreateTemp("", "hsmkeys-in-*")
	if err != nil {
		return nil, 0, nil, err
	}
	cleanup := func() {
		spool.Close()
		os.Remove(spool.Name())
	}
	n, err := io.Copy(spool, newCtxReader(ctx, src))
	if err != nil {
		cleanup()
		return nil, 0, nil, fmt.Errorf("reading the input: %w", err)
	}
	return spool, n, cleanup, nil
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
