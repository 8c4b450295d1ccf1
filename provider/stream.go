package provider

// Encrypted messages: a CMS AuthEnvelopedData (id-data content) whose
// content-encryption key is a fresh session key per message, wrapped for
// each recipient; the content is encrypted by the token in a streaming
// fashion, so a message of any size goes through in bounded memory.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// DefaultChunkSize is how much data one token call encrypts or decrypts in
// a stream unless Config.ChunkSize says otherwise. Chosen by measurement
// (BenchmarkChunkSize, docs/performance.md): on SoftHSM 16 and 32 KiB parts
// run at about 770 MiB/s, 64 KiB at 460, 1 MiB at 240; of the two fastest,
// 32 KiB makes half the calls, which a networked HSM pays for in round trips.
const DefaultChunkSize = 32 << 10

// chunkSize is the part size of this provider's streams.
func (p *Provider) chunkSize() int {
	if p.cfg.ChunkSize > 0 {
		return p.cfg.ChunkSize
	}
	return DefaultChunkSize
}

// oneShotLimit is the largest message decrypted with the token's own
// AES-GCM decryption, which buffers the whole message inside the token
// until it has checked the tag (SoftHSM does; PKCS#11 v2.40 mechanisms
// §2.12.3 allows it). Larger messages are checked and decrypted in
// streaming passes (see Decrypt).
const oneShotLimit = 4 << 20

// maxGCMContent is the most AES-GCM may encrypt under one nonce: 2^39-256
// bits (NIST SP 800-38D §5.2.1.1).
const maxGCMContent = (1<<39 - 256) / 8

// Encrypt encrypts src for the KEKs in to and writes a CMS message to dst
// (DER, or PEM with o.Armor). Each message gets a fresh session key, made on
// the token, wrapped for each KEK, used for AES-GCM on the token, and
// destroyed. size is the length of src when known (the message is then
// definite-length DER), or -1 (indefinite-length BER, as openssl -stream
// writes). Memory use does not grow with the size of src.
func (p *Provider) Encrypt(ctx context.Context, dst io.Writer, src io.Reader, size int64, to []*KEK, o Options) (err error) {
	if dst == nil || src == nil {
		return fmt.Errorf("encrypt: %w: nil reader or writer", ErrInvalidInput)
	}
	if size > maxGCMContent {
		return fmt.Errorf("encrypt: %w: %d bytes is more than AES-GCM may encrypt under one key and nonce", ErrInvalidInput, size)
	}
	if err := checkKEKs(to); err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	src, dst = closingReader{p, src}, closingWriter{p, dst} // end at Shutdown
	if p.cfg.ExportPolicy == ExportNone {
		return fmt.Errorf("encrypt: %w: export policy none: message keys cannot be wrapped for recipients", ErrPolicy)
	}
	// A new key, or one the data-key cache holds with its recipients (cache.go).
	k, recipients, done, err := p.encryptKey(ctx, to, o.Context, size)
	if err != nil {
		return fmt.Errorf("encrypt: %w", err)
	}
	defer func() { done(err) }()

	out := dst
	var armor io.WriteCloser
	if o.Armor {
		armor = cms.NewArmorWriter(dst)
		out = armor
	}
	bw := bufio.NewWriterSize(out, 2*p.chunkSize())
	err = k.use(ctx, "content", func(s *p11.Session) error {
		h := &cms.Header{Algorithm: gcmOID(k.alg), Nonce: make([]byte, p11.NonceSize)}
		var err error
		if h.AuthAttrs, err = authAttrs(cms.ContentTypeAttr(cms.OIDData), o.Context, false); err != nil {
			return err
		}
		h.Recipients = recipients
		for _, kek := range to {
			if recipients != nil {
				break
			}
			r, err := p.recipientFor(s, k.obj, k.alg, kek)
			if err != nil {
				return err
			}
			h.Recipients = append(h.Recipients, r)
		}
		if _, err := rand.Read(h.Nonce); err != nil {
			return err
		}
		if k.seals.Add(1) > p.cfg.MaxSealsPerKey {
			return ErrKeyExhausted
		}
		return p.encryptContent(ctx, s, k.obj, h, bw, src, size)
	})
	if err == nil {
		err = bw.Flush()
	}
	if err == nil && armor != nil {
		err = armor.Close()
	}
	if err != nil {
		return fmt.Errorf("encrypt: %w", mapCMS(err))
	}
	return nil
}

// encryptContent writes header, GCM ciphertext of src and trailer.
func (p *Provider) encryptContent(ctx context.Context, s *p11.Session, key p11.Object, h *cms.Header, w io.Writer, src io.Reader, size int64) error {
	if err := cms.WriteHeader(w, h, size); err != nil {
		return err
	}
	emit := func(c []byte) error {
		if size >= 0 {
			_, err := w.Write(c)
			return err
		}
		return cms.WriteChunk(w, c)
	}
	buf := make([]byte, p.chunkSize())
	first, ferr := io.ReadFull(src, buf)
	if ferr == io.EOF || ferr == io.ErrUnexpectedEOF {
		// The whole message fits in one part: one C_Encrypt, where
		// C_EncryptUpdate and C_EncryptFinal would be two round trips.
		return p.encryptOnePart(s, key, h, w, emit, buf[:first], size)
	}
	if ferr != nil {
		return ferr
	}
	enc, err := p.pool.GCMEncrypt(s, key, h.Nonce, h.AAD())
	if err != nil {
		return err
	}
	defer enc.Abort()
	var n int64
	for pending := true; ; pending = false {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, rerr := first, error(nil)
		if !pending {
			m, rerr = io.ReadFull(src, buf)
		}
		if m > 0 {
			n += int64(m)
			if size >= 0 && n > size {
				return fmt.Errorf("%w: the input is longer than the %d bytes announced", ErrInvalidInput, size)
			}
			if n > maxGCMContent {
				return fmt.Errorf("%w: the input is more than AES-GCM may encrypt under one key and nonce", ErrInvalidInput)
			}
			c, err := enc.UpdateReuse(buf[:m]) // emit hands c on before the next part
			if err != nil {
				return err
			}
			if err := emit(c); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if size >= 0 && n != size {
		return fmt.Errorf("%w: the input is %d bytes, %d were announced", ErrInvalidInput, n, size)
	}
	last, err := enc.Final()
	if err != nil {
		return err
	}
	if len(last) < p11.TagSize {
		return fmt.Errorf("token returned %d bytes at the end of a gcm encryption", len(last))
	}
	if err := emit(last[:len(last)-p11.TagSize]); err != nil {
		return err
	}
	return cms.WriteTrailer(w, h, size, last[len(last)-p11.TagSize:])
}

// encryptOnePart encrypts a message of at most one part with a single
// C_Encrypt and writes it, its trailer and tag after the header.
func (p *Provider) encryptOnePart(s *p11.Session, key p11.Object, h *cms.Header, w io.Writer, emit func([]byte) error, msg []byte, size int64) error {
	if size >= 0 && int64(len(msg)) != size {
		return fmt.Errorf("%w: the input is %d bytes, %d were announced", ErrInvalidInput, len(msg), size)
	}
	sealed, err := p.pool.SealGCM(s, key, h.Nonce, h.AAD(), msg)
	if err != nil {
		return err
	}
	if len(sealed) != len(msg)+p11.TagSize {
		return fmt.Errorf("token returned %d bytes of ciphertext for %d of plaintext", len(sealed), len(msg))
	}
	if body := sealed[:len(msg)]; len(body) > 0 {
		if err := emit(body); err != nil {
			return err
		}
	}
	return cms.WriteTrailer(w, h, size, sealed[len(msg):])
}

// Decrypt decrypts a message made by Encrypt (or by openssl cms for a
// recipient on this token) and writes the plaintext to dst. The message is
// read from src (DER, BER or PEM), size bytes long. o.Context must equal the
// encryption context the message was made with.
//
// No plaintext is written to dst unless the whole message authenticates:
// a message up to 4 MiB is decrypted by the token's AES-GCM in one call;
// a larger one is first checked (AES-CTR decryption and AES-GCM
// re-encryption on the token, comparing the tag), then decrypted with AES-CTR
// in a second pass. Memory use does not grow with the message. If the tag
// fails, dst has received nothing. If the token fails during the second
// pass (a device error, the token gone), dst may have received an
// authenticated prefix of the plaintext and Decrypt returns the error:
// write to a temporary file and keep it only on success, as hsmkeys does.
func (p *Provider) Decrypt(ctx context.Context, dst io.Writer, src io.ReaderAt, size int64, o Options) error {
	if dst == nil || src == nil {
		return fmt.Errorf("decrypt: %w: nil reader or writer", ErrInvalidInput)
	}
	if size <= 0 {
		return fmt.Errorf("decrypt: %w: empty input", ErrMalformed)
	}
	src, dst = closingReaderAt{p, src}, closingWriter{p, dst} // end at Shutdown
	var head [64]byte
	n, _ := src.ReadAt(head[:], 0)
	if cms.IsArmored(head[:n]) {
		f, fsize, err := unarmorToTemp(io.NewSectionReader(src, 0, size))
		if err != nil {
			return fmt.Errorf("decrypt: %w", err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		src, size = f, fsize
	}
	m, err := cms.Parse(src, size)
	if err != nil {
		return fmt.Errorf("decrypt: %w", mapCMS(err))
	}
	if err := p.decryptMessage(ctx, dst, m, o); err != nil {
		return fmt.Errorf("decrypt: %w", err)
	}
	return nil
}

// unarmorToTemp decodes PEM into a temporary file (ciphertext only), so
// that the message can be read at random offsets.
func unarmorToTemp(r io.Reader) (*os.File, int64, error) {
	f, err := os.CreateTemp("", "hsmkeys-der-*")
	if err != nil {
		return nil, 0, err
	}
	n, err := io.Copy(f, cms.NewUnarmorReader(r))
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, 0, mapCMS(err)
	}
	return f, n, nil
}

func (p *Provider) decryptMessage(ctx context.Context, dst io.Writer, m *cms.Message, o Options) error {
	h := m.Header
	if h.ContentType.Equal(cms.OIDKeyManifest) {
		return fmt.Errorf("%w: this is an exported key; use Import", ErrUnsupported)
	}
	if !h.ContentType.Equal(cms.OIDData) {
		return fmt.Errorf("%w: content type %v", ErrUnsupported, h.ContentType)
	}
	if h.ICVLen != 0 && h.ICVLen != p11.TagSize {
		return fmt.Errorf("%w: a %d-byte gcm tag (hsmkeys checks 16-byte tags)", ErrUnsupported, h.ICVLen)
	}
	if len(h.Nonce) != p11.NonceSize {
		return fmt.Errorf("%w: a %d-byte gcm nonce", ErrUnsupported, len(h.Nonce))
	}
	if err := checkContext(h, o.Context); err != nil {
		return err
	}
	alg, err := algFromOID(h.Algorithm)
	if err != nil {
		return err
	}
	// Unwrapped now, or kept by the data-key cache (cache.go).
	k, done, err := p.decryptKey(ctx, h, alg, o.Context)
	if err != nil {
		return err
	}
	defer func() { done(err) }()
	if m.ContentLen <= oneShotLimit {
		err = p.decryptOneShot(ctx, dst, k, m)
		return err
	}
	err = p.decryptStreaming(ctx, dst, k, m)
	return err
}

func (p *Provider) decryptOneShot(ctx context.Context, dst io.Writer, k *Key, m *cms.Message) error {
	sealed := make([]byte, m.ContentLen, m.ContentLen+int64(len(m.MAC)))
	if _, err := io.ReadFull(m.Content(), sealed); err != nil {
		return mapCMS(err)
	}
	sealed = append(sealed, m.MAC...)
	var pt []byte
	err := k.use(ctx, "content", func(s *p11.Session) error {
		var err error
		pt, err = p.pool.OpenGCM(s, k.obj, m.Header.Nonce, m.Header.AAD(), sealed)
		if err != nil && isAuthFailure(err) {
			return fmt.Errorf("%w: %w", ErrAuthentication, err)
		}
		return err
	})
	if err != nil {
		return err
	}
	_, err = dst.Write(pt)
	clear(pt)
	return err
}

// decryptStreaming checks the tag of a large message, then decrypts it.
//
// Pass 1, on two sessions at once: AES-CTR from inc32(J0) gives
// the plaintext, which AES-GCM encryption with the message's own nonce and
// AAD turns back into the ciphertext and, at the end, the tag. The
// plaintext is discarded. Pass 2, only if the tags match: AES-CTR again,
// to dst. Every AES operation runs on the token under the session key; Go
// sees plaintext only in 64 KiB pieces and never the key or the GHASH key.
func (p *Provider) decryptStreaming(ctx context.Context, dst io.Writer, k *Key, m *cms.Message) error {
	h := m.Header
	err := k.usePair(ctx, "tag check", func(s1, s2 *p11.Session) error {
		ctr, err := p.pool.CTR(s1, k.obj, h.Nonce)
		if err != nil {
			return err
		}
		defer ctr.Abort()
		gcm, err := p.pool.GCMEncrypt(s2, k.obj, h.Nonce, h.AAD())
		if err != nil {
			return err
		}
		defer gcm.Abort()
		err = eachChunk(ctx, m.Content(), p.chunkSize(), func(c []byte) error {
			pt, err := ctr.Update(c)
			if err != nil {
				return err
			}
			again, err := gcm.Update(pt)
			clear(pt)
			if err != nil {
				return err
			}
			if !bytes.Equal(again, c) {
				return errors.New("token aes-ctr and aes-gcm disagree about the keystream")
			}
			return nil
		})
		if err != nil {
			return err
		}
		if _, err := ctr.Final(); err != nil {
			return err
		}
		last, err := gcm.Final()
		if err != nil {
			return err
		}
		if len(last) < p11.TagSize || subtle.ConstantTimeCompare(last[len(last)-p11.TagSize:], m.MAC) != 1 {
			return fmt.Errorf("%w: gcm tag mismatch", ErrAuthentication)
		}
		return nil
	})
	if err != nil {
		return err
	}
	return k.use(ctx, "content", func(s *p11.Session) error {
		ctr, err := p.pool.CTR(s, k.obj, h.Nonce)
		if err != nil {
			return err
		}
		defer ctr.Abort()
		err = eachChunk(ctx, m.Content(), p.chunkSize(), func(c []byte) error {
			pt, err := ctr.Update(c)
			if err != nil {
				return err
			}
			_, err = dst.Write(pt)
			clear(pt)
			return err
		})
		if err != nil {
			return err
		}
		rest, err := ctr.Final()
		if err == nil && len(rest) > 0 {
			_, err = dst.Write(rest)
		}
		return err
	})
}

// eachChunk reads r in pieces of size.
func eachChunk(ctx context.Context, r io.Reader, size int, fn func([]byte) error) error {
	buf := make([]byte, size)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if err := fn(buf[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return mapCMS(err)
		}
	}
}
