package provider

import (
	"fmt"
	"io"

	"github.com/hsmkeys/hsmkeys/provider/internal/cms"
	"github.com/hsmkeys/hsmkeys/provider/internal/p11"
)

// encryptWhole writes header, content and trailer of a message encrypted
// in one AES-GCM call, for tokens that cannot stream GCM
// (p11.ErrNoStreaming: no multi-part GCM, as NSS softoken; or the IV comes
// back only with the output, as simulated for Luna). The message is held in
// memory, up to MaxSealSize; the header follows the encryption so that it
// carries the IV the token chose.
func (p *Provider) encryptWhole(s *p11.Session, key p11.Object, h *cms.Header, w io.Writer, src io.Reader, size int64) error {
	pt, err := io.ReadAll(io.LimitReader(src, MaxSealSize+1))
	if err != nil {
		clear(pt)
		return err
	}
	defer clear(pt)
	if len(pt) > MaxSealSize {
		return fmt.Errorf("%w: this token cannot stream aes-gcm, and the message is more than %d bytes", ErrUnsupported, MaxSealSize)
	}
	if size >= 0 && int64(len(pt)) != size {
		return fmt.Errorf("%w: the input is %d bytes, %d were announced", ErrInvalidInput, len(pt), size)
	}
	sealed, err := p.pool.SealGCM(s, key, h.Nonce, h.AAD(), pt)
	if err != nil {
		return err
	}
	if len(sealed) != len(pt)+p11.TagSize {
		return fmt.Errorf("token returned %d bytes of ciphertext for %d of plaintext", len(sealed), len(pt))
	}
	if err := cms.WriteHeader(w, h, size); err != nil {
		return err
	}
	body, tag := sealed[:len(pt)], sealed[len(pt):]
	if size >= 0 {
		if _, err := w.Write(body); err != nil {
			return err
		}
	} else if len(body) > 0 {
		for off := 0; off < len(body); off += DefaultChunkSize {
			if err := cms.WriteChunk(w, body[off:min(off+DefaultChunkSize, len(body))]); err != nil {
				return err
			}
		}
	}
	return cms.WriteTrailer(w, h, size, tag)
}
