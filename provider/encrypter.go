package provider

// The writer form of Encrypt: the same message (a CMS AuthEnvelopedData,
// indefinite-length BER, under a fresh session key), for callers that have
// an encoder to feed rather than a reader to hand over.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// NewEncrypter starts a message for the KEKs in to and returns a writer of
// its plaintext, the way age.Encrypt does: what is written is encrypted on
// the token and written to dst as it goes, in parts of the provider's chunk
// size; Close ends the message (the GCM tag) and does not close dst. The
// message is the one Encrypt writes with size UnknownSize
// (indefinite-length BER, or PEM with o.Armor), read by Decrypt, hsmkeys
// decrypt and openssl cms. A message holds at most MaxMessageSize bytes
// (the AES-GCM limit, NIST SP 800-38D §5.2.1.1): the Write that would pass
// it fails with ErrInvalidInput and voids the message.
//
// The header, with the session key wrapped for each KEK, is written before
// NewEncrypter returns. Between NewEncrypter and Close the writer holds one
// of the provider's sessions and its session key: a multi-part AES-GCM
// encryption is state of the session it began on, which runs one
// encryption at a time (PKCS#11 v2.40 §5.8, C_EncryptInit; §5.2). With
// Config.MaxSessions writers open, other calls wait for a session, as long
// as their context lets them (and Provider.Close waits for those). Write and Close honour ctx: cancel it to abandon a
// message. After an error from Write or Close the message is void: the
// writer has ended its token operation and destroyed its session key, and
// every later call returns that error. A writer never closed keeps its
// session and key until Provider.Close, which ends both. Write after Close
// fails. An Encrypter is safe for concurrent use, though concurrent Writes
// interleave in no defined order.
func (p *Provider) NewEncrypter(ctx context.Context, dst io.Writer, to []*KEK, o Options) (io.WriteCloser, error) {
	if dst == nil {
		return nil, fmt.Errorf("encrypt: %w: nil writer", ErrInvalidInput)
	}
	if err := checkKEKs(to); err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	if p.cfg.ExportPolicy == ExportNone {
		return nil, fmt.Errorf("encrypt: %w: export policy none: message keys cannot be wrapped for recipients", ErrPolicy)
	}
	k, err := p.Generate(ctx, AES256)
	if err != nil {
		return nil, fmt.Errorf("encrypt: %w", err)
	}
	w := &encrypter{p: p, k: k, ctx: ctx, buf: make([]byte, 0, p.chunkSize())}
	w.out = dst
	if o.Armor {
		w.armor = cms.NewArmorWriter(dst)
		w.out = w.armor
	}
	w.bw = bufio.NewWriterSize(w.out, 2*p.chunkSize())
	err = k.guard("content", func() error {
		k.detach = w.detach
		s, err := p.pool.Get(ctx)
		if err != nil {
			return p.loginErr(err)
		}
		w.s = s
		if k.owner.Dead() {
			return ErrKeyLost
		}
		h := &cms.Header{Algorithm: gcmOID(k.alg), Nonce: make([]byte, p11.NonceSize)}
		if h.AuthAttrs, err = authAttrs(cms.ContentTypeAttr(cms.OIDData), o.Context, false); err != nil {
			return err
		}
		for _, kek := range to {
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return w.check(err)
			}
			h.Recipients = append(h.Recipients, r)
		}
		if _, err := rand.Read(h.Nonce); err != nil {
			return err
		}
		w.h = h
		k.seals.Add(1)
		// Started before the header: a token that makes its own IV gives
		// it now (p11.GCMEncrypt).
		w.enc, err = p.pool.GCMEncrypt(s, k.obj, h.Nonce, h.AAD())
		if errors.Is(err, p11.ErrNoStreaming) {
			w.whole, err = []byte{}, nil // the message is held until Close (encryptWhole)
			return nil
		}
		if err := w.check(err); err != nil {
			return err
		}
		return cms.WriteHeader(w.bw, h, -1)
	})
	if err != nil {
		w.fail(err)
		return nil, w.err
	}
	return w, nil
}

// encrypter is what NewEncrypter returns.
//
// Its token state (s, enc) is touched only under the key's lock: for
// reading by Write and Close (through Key.guard, which also holds the
// provider open), for writing by Key.destroy, which calls detach. So
// Provider.Close, which destroys every key, ends the operation and returns
// the session of a writer that was never closed, and cannot wait forever
// for a session such writers hold.
type encrypter struct {
	p   *Provider
	k   *Key
	ctx context.Context
	h   *cms.Header

	mu    sync.Mutex // one Write or Close at a time
	out   io.Writer  // dst, or armor over it
	armor io.WriteCloser
	bw    *bufio.Writer
	buf   []byte // plaintext not yet given to the token, < one chunk
	n     int64  // plaintext bytes so far
	err   error  // sticky: the first failure
	done  bool   // Close succeeded

	s   *p11.Session       // held from NewEncrypter to the end
	enc *p11.EncryptStream // the AES-GCM operation on s
	// whole is the plaintext so far, non-nil instead of enc where the token
	// cannot stream GCM (TokenProfile.MultiPartGCM); sealed at Close.
	whole []byte
}

// Write encrypts p, handing the token whole chunks.
func (w *encrypter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return 0, fmt.Errorf("encrypt: %w: write after close", ErrInvalidInput)
	}
	if w.err != nil {
		return 0, w.err
	}
	if len(b) == 0 {
		return 0, nil
	}
	if w.n+int64(len(b)) > maxGCMContent {
		w.fail(fmt.Errorf("%w: the input is more than AES-GCM may encrypt under one key and nonce", ErrInvalidInput))
		return 0, w.err
	}
	if w.whole != nil {
		if len(w.whole)+len(b) > MaxSealSize {
			w.fail(fmt.Errorf("%w: this token cannot stream aes-gcm, and the message is more than %d bytes", ErrUnsupported, MaxSealSize))
			return 0, w.err
		}
		w.whole = append(w.whole, b...)
		w.n += int64(len(b))
		return len(b), nil
	}
	chunk := cap(w.buf)
	written := 0
	err := w.k.guard("content", func() error {
		if w.enc == nil {
			return ErrKeyDestroyed
		}
		for len(b) > 0 {
			if err := w.ctx.Err(); err != nil {
				return err
			}
			if len(w.buf) == 0 && len(b) >= chunk {
				// Straight from the caller, counted once the token took it.
				if err := w.update(b[:chunk]); err != nil {
					return err
				}
				b = b[chunk:]
				written += chunk
				continue
			}
			m := min(chunk-len(w.buf), len(b))
			w.buf = append(w.buf, b[:m]...)
			b = b[m:]
			written += m
			if len(w.buf) < chunk {
				continue
			}
			if err := w.update(w.buf); err != nil {
				return err
			}
			clear(w.buf)
			w.buf = w.buf[:0]
		}
		return nil
	})
	w.n += int64(written)
	if err != nil {
		w.fail(err)
		return written, w.err
	}
	return written, nil
}

// update encrypts one part on the token and writes its ciphertext.
func (w *encrypter) update(part []byte) error {
	c, err := w.enc.Update(part)
	if err != nil {
		return w.check(err)
	}
	return cms.WriteChunk(w.bw, c)
}

// Close encrypts what is buffered, writes the tag and the end of the
// message, and destroys the session key.
func (w *encrypter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return nil
	}
	if w.err != nil {
		return w.err
	}
	var tag []byte
	err := w.k.guard("content", func() error {
		if w.whole != nil {
			err := w.p.encryptWhole(w.s, w.k.obj, w.h, w.bw, bytes.NewReader(w.whole), -1)
			clear(w.whole)
			w.whole = nil
			w.release()
			return w.check(err)
		}
		if w.enc == nil {
			return ErrKeyDestroyed
		}
		if err := w.ctx.Err(); err != nil {
			return err
		}
		if len(w.buf) > 0 {
			if err := w.update(w.buf); err != nil {
				return err
			}
			clear(w.buf)
			w.buf = w.buf[:0]
		}
		last, err := w.enc.Final()
		if err != nil {
			return w.check(err)
		}
		if len(last) < p11.TagSize {
			return fmt.Errorf("token returned %d bytes at the end of a gcm encryption", len(last))
		}
		if err := cms.WriteChunk(w.bw, last[:len(last)-p11.TagSize]); err != nil {
			return err
		}
		tag = last[len(last)-p11.TagSize:]
		w.release()
		return nil
	})
	if err == nil && tag != nil {
		err = cms.WriteTrailer(w.bw, w.h, -1, tag)
	}
	if err == nil {
		err = w.bw.Flush()
	}
	if err == nil && w.armor != nil {
		err = w.armor.Close()
	}
	if err != nil {
		w.fail(err)
		return w.err
	}
	w.done = true
	w.k.Destroy(context.WithoutCancel(w.ctx))
	return nil
}

// check tells the pool about a token error on the writer's session, so a
// dead session is known as such (Pool.Check).
func (w *encrypter) check(err error) error {
	if err != nil && w.s != nil {
		w.p.pool.Check(w.s, err)
	}
	return err
}

// fail records the first error, ends the token operation, returns the
// session and destroys the key.
func (w *encrypter) fail(err error) {
	if w.err == nil {
		w.err = fmt.Errorf("encrypt: %w", mapCMS(err))
	}
	clear(w.buf)
	w.buf = w.buf[:0]
	clear(w.whole)
	w.whole = nil
	// Key.destroy calls detach under the key's write lock.
	w.k.Destroy(context.WithoutCancel(w.ctx))
	// If the provider was closing (Destroy did nothing; Close's own destroy
	// may be detaching now) or the key was lost (nothing to destroy), give
	// the session back all the same, under the same lock.
	w.k.mu.Lock()
	w.release()
	w.k.mu.Unlock()
}

// detach is called by Key.destroy, with the key's write lock held.
func (w *encrypter) detach() { w.release() }

// release ends the operation if one is active and returns the session to
// the pool. The caller holds the key's lock (reading, in a Write or Close
// that owns the token state; writing otherwise).
func (w *encrypter) release() {
	if w.enc != nil {
		w.enc.Abort()
		w.enc = nil
	}
	if w.s != nil {
		w.p.pool.Put(w.s)
		w.s = nil
	}
}
