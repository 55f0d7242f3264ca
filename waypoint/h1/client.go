package h1

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// ErrBodyRead marks a failure to read the request body being sent (the
// client's side, not the endpoint's).
var ErrBodyRead = errors.New("reading the request body")

// WriteRequestHead writes the request line and headers. The path goes out
// as given (URL.Opaque or the escaped path) with its query.
func WriteRequestHead(bw *bufio.Writer, req *http.Request) {
	bw.WriteString(req.Method)
	bw.WriteByte(' ')
	bw.WriteString(req.URL.RequestURI())
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	bw.WriteString(host)
	bw.WriteString("\r\n")
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue
		}
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
	switch {
	case req.Body == nil:
		if req.ContentLength == 0 && (req.Method == "POST" || req.Method == "PUT" || req.Method == "PATCH") {
			bw.WriteString("Content-Length: 0\r\n")
		}
	case req.ContentLength >= 0:
		bw.WriteString("Content-Length: ")
		writeInt(bw, req.ContentLength, 10)
		bw.WriteString("\r\n")
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(req.Trailer) > 0 {
			bw.WriteString("Trailer: ")
			first := true
			for k := range req.Trailer {
				if !first {
					bw.WriteString(", ")
				}
				bw.WriteString(k)
				first = false
			}
			bw.WriteString("\r\n")
		}
	}
	if req.Close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

// WriteBody writes the request body: exactly ContentLength bytes, or
// chunked (flushed chunk by chunk: it may be a stream) with trailers.
func WriteBody(bw *bufio.Writer, req *http.Request) error {
	// The body is taken once: a retry on another connection may give the
	// request a new one while this writer still runs.
	body := req.Body
	if body == nil {
		return nil
	}
	defer body.Close()
	if req.ContentLength >= 0 {
		// Read straight into the writer's free space: no copy buffer.
		remaining := req.ContentLength
		for remaining > 0 {
			if bw.Available() == 0 {
				if err := bw.Flush(); err != nil {
					return err
				}
			}
			buf := bw.AvailableBuffer()[:min(int64(bw.Available()), remaining)]
			n, rerr := body.Read(buf)
			if n > 0 {
				if _, err := bw.Write(buf[:n]); err != nil {
					return err
				}
				remaining -= int64(n)
			}
			if rerr == io.EOF && remaining > 0 {
				return fmt.Errorf("%w: %v", ErrBodyRead, io.ErrUnexpectedEOF)
			}
			if rerr != nil && rerr != io.EOF {
				return fmt.Errorf("%w: %v", ErrBodyRead, rerr)
			}
		}
		return nil
	}
	bp := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(bp)
	buf := *bp
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			writeInt(bw, int64(n), 16)
			bw.WriteString("\r\n")
			bw.Write(buf[:n])
			bw.WriteString("\r\n")
			if err := bw.Flush(); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("%w: %v", ErrBodyRead, rerr)
		}
	}
	bw.WriteString("0\r\n")
	for k, vs := range req.Trailer {
		for _, v := range vs {
			writeField(bw, k, v)
		}
	}
	bw.WriteString("\r\n")
	return bw.Flush()
}

// writeInt writes n in the given base without making a string of it.
func writeInt(bw *bufio.Writer, n int64, base int) {
	if bw.Available() < 20 {
		bw.WriteString(strconv.FormatInt(n, base))
		return
	}
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), n, base))
}

var chunkBufs = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}
