// The seed's Go backend, rebuilt as the performance reference for ours: /sleep with
// the request-context cancel pattern, /stream flushed chunk by chunk, and a logging
// middleware writing one logfmt line per request. Benchmarks only; the lab runs the
// Python backend (apps/backend).
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// Flush is not promoted from the embedded interface: forward it for /stream.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func withAccessLog(hostname string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		log.Printf("ts=%s method=%s path=%s remote=%s hostname=%s status=%d duration_ms=%d",
			start.UTC().Format(time.RFC3339Nano), r.Method, strconv.Quote(r.URL.RequestURI()),
			r.RemoteAddr, hostname, rec.status, time.Since(start).Milliseconds())
	})
}

func intParam(r *http.Request, name string, def, low, high int) int {
	if v, err := strconv.Atoi(r.URL.Query().Get(name)); err == nil && v >= low && v <= high {
		return v
	}
	return def
}

func sleepHandler(w http.ResponseWriter, r *http.Request) {
	n := intParam(r, "seconds", 1, 0, 600)
	timer := time.NewTimer(time.Duration(n) * time.Second)
	defer timer.Stop()
	select {
	case <-timer.C:
		fmt.Fprintf(w, "slept %ds\n", n)
	case <-r.Context().Done():
	}
}

func streamHandler(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	chunks := intParam(r, "chunks", 10, 1, 100000)
	interval := time.Duration(intParam(r, "interval_ms", 1000, 0, 60000)) * time.Millisecond
	w.Header().Set("Content-Type", "text/plain")
	start := time.Now()
	for i := 0; i < chunks; i++ {
		if i > 0 {
			select {
			case <-time.After(interval):
			case <-r.Context().Done():
				return
			}
		}
		fmt.Fprintf(w, "chunk %d @ %dms\n", i, time.Since(start).Milliseconds())
		flusher.Flush()
	}
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	hostname, _ := os.Hostname()
	log.SetFlags(0)
	log.SetOutput(os.Stdout)
	mux := http.NewServeMux()
	mux.HandleFunc("/sleep", sleepHandler)
	mux.HandleFunc("/stream", streamHandler)
	srv := &http.Server{Addr: os.Getenv("BIND_HOST") + ":" + port, Handler: withAccessLog(hostname, mux)}
	quit := make(chan os.Signal, 1)
	signal.Notify(quit, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Fatalf("listen: %v", err)
		}
	}()
	<-quit
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("msg=shutdown_cut error=%q", err)
	}
}
