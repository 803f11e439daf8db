#!/bin/sh
# graceful-drain.sh: the improved mode's preStop hook in the hc container (seed 003 §5).
#
# The seed's seven steps, in the seed's order (DRAIN_ORDER=drain-first, the default):
#   [1] POST hc /drain              OPEN -> DRAINING (both probes still pass)
#   [2] POST envoy /drain_listeners graceful drain; Connection: close on responses
#   [3] poll Envoy until the data-plane active-request gauge is 0, or DRAIN_TIMEOUT
#   [4] POST hc /close-lb           DRAINING -> CLOSING: HAProxy's check fails
#   [5] sleep LB_BUFFER             HAProxy needs fall x inter (+ check timeout) to see it
#   [6] POST hc /close              CLOSING -> CLOSED: readiness fails, endpoint removed
#   [7] done
#
# DRAIN_ORDER=lb-first (the `ordered` mode, beyond the seed) puts the LB first:
#   [0] sleep ENDPOINT_SYNC_WAIT    every kube-proxy drops this terminating endpoint
#                                   from its cluster-wide chain, which a node's own
#                                   traffic takes: an LB on a worker checking its own
#                                   node could reach this hc, and its 404 would take
#                                   that node out too (0: the LB is off the workers)
#   [1] POST hc /nolb               OPEN -> NOLB: HAProxy's check gets 404, which
#                                   `http-check disable-on-404` turns into NOLB: no new
#                                   requests, established sessions go on
#   [1b] sleep NOLB_WAIT            longer than HAProxy needs to see the 404
#   [2]-[7] as above, with [4] going NOLB -> CLOSING. Nothing new arrives once Envoy
#   drains, so the gauge reaches 0 as soon as the requests already here end, and the
#   DOWN's shutdown-sessions in [4] finds nothing to cut.
#
# Fixed here, from docs/design.md:
# - The seed's filter `downstream_rq_active|upstream_rq_active` also matches the admin
#   listener's own /stats request (http.admin.downstream_rq_active is 1 while /stats is
#   answered) and cluster.*.upstream_rq_active_overflow, so its sum never reached 0
#   and every drain ran to DRAIN_TIMEOUT. We count only the gateway's data-plane HTTP
#   connection manager: under Istio 1.30 its stat prefix is outbound_0.0.0.0_<port>;
#   (older Istio: without the `;`, which the filter allows). (Istio emits http.* stats
#   only when proxyStatsMatcher includes them: see the manifests.)
# - The seed treated an unreadable stats endpoint as 0 (awk's END printed sum+0) and
#   could flip the LB with requests in flight. Unknown is not zero: we keep polling.
#
# Not fixed here, by design of the drain-first order: the LB still sends new requests
# during [2]-[3] (the check passes in DRAINING), so under steady traffic the gauge
# seldom reaches 0. See README, "Ordering".
#
# Best effort: a failing step is logged and the script goes on; it always exits 0 so
# kubelet proceeds to SIGTERM. Worst case duration:
#   DRAIN_TIMEOUT + POLL_INTERVAL + LB_BUFFER + 2 x CURL_MAX_TIME
set -u

HC_URL="${HC_URL:-http://127.0.0.1:18180}"
ENVOY_ADMIN="${ENVOY_ADMIN:-http://127.0.0.1:15000}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-120}"
POLL_INTERVAL="${POLL_INTERVAL:-2}"
LB_BUFFER="${LB_BUFFER:-10}"
CURL_MAX_TIME="${CURL_MAX_TIME:-5}"
GATEWAY_PORT="${GATEWAY_PORT:-8080}"
DRAIN_ORDER="${DRAIN_ORDER:-drain-first}"
NOLB_WAIT="${NOLB_WAIT:-5}"
ENDPOINT_SYNC_WAIT="${ENDPOINT_SYNC_WAIT:-2}"
ACTIVE_STATS_FILTER="${ACTIVE_STATS_FILTER:-^http\.outbound_0\.0\.0\.0_${GATEWAY_PORT};?\.downstream_rq_active\$}"
# preStop output never reaches `kubectl logs`; PID 1's stdout does.
LOG_MIRROR="${LOG_MIRROR:-/proc/1/fd/1}"

log() {
    line="ts=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ) app=graceful-drain $*"
    printf '%s\n' "$line"
    if [ -n "$LOG_MIRROR" ] && [ -w "$LOG_MIRROR" ]; then
        printf '%s\n' "$line" >>"$LOG_MIRROR" 2>/dev/null || true
    fi
}

# Refuse a bad setting before anything changes: exit 2 naming the variable, the value
# and the allowed range, before the first request. The ranges are the timing model's
# (DRAIN_SCRIPT_LIMITS in runbook/model/timing.py); a test keeps the two equal.
bad_setting() {
    log "level=error msg=bad_setting var=$1 value=\"$2\" allowed=\"$3\""
    exit 2
}
# require_whole NAME VALUE LOW HIGH: digits only, and at most 6 of them before any
# arithmetic (a longer number overflows the shell's: "Illegal number" mid-drain).
require_whole() {
    case "$2" in
        '' | *[!0-9]*) bad_setting "$1" "$2" "whole number $3..$4" ;;
    esac
    if [ "${#2}" -gt 6 ] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        bad_setting "$1" "$2" "whole number $3..$4"
    fi
}
# require_seconds NAME VALUE LOW HIGH: a decimal like 2 or 0.5 (0 would poll in a
# tight loop; `sleep .` spins on an error).
require_seconds() {
    case "$2" in
        '' | *[!0-9.]* | *.*.* | .* | *.) bad_setting "$1" "$2" "seconds $3..$4, e.g. 2 or 0.5" ;;
    esac
    if [ "${#2}" -gt 8 ] || ! awk -v v="$2" -v lo="$3" -v hi="$4" \
        'BEGIN { exit !(v + 0 >= lo + 0 && v + 0 <= hi + 0) }'; then
        bad_setting "$1" "$2" "seconds $3..$4, e.g. 2 or 0.5"
    fi
}
require_whole DRAIN_TIMEOUT "$DRAIN_TIMEOUT" 3 3600
require_seconds POLL_INTERVAL "$POLL_INTERVAL" 0.1 60
require_whole LB_BUFFER "$LB_BUFFER" 0 600
# 0 would mean "no limit" to curl: a hung hc or admin would hold the preStop to SIGKILL
require_whole CURL_MAX_TIME "$CURL_MAX_TIME" 1 60
require_whole GATEWAY_PORT "$GATEWAY_PORT" 1 65535
case "$DRAIN_ORDER" in
    drain-first | lb-first) ;;
    *) bad_setting DRAIN_ORDER "$DRAIN_ORDER" "drain-first or lb-first" ;;
esac
require_seconds NOLB_WAIT "$NOLB_WAIT" 0.1 600
require_seconds ENDPOINT_SYNC_WAIT "$ENDPOINT_SYNC_WAIT" 0 600
# The worst case below holds only if steps 0-2 (two curls; ENDPOINT_SYNC_WAIT and
# NOLB_WAIT in lb-first)
# end inside DRAIN_TIMEOUT, which counts from the start: past it the poll never runs
# and close-lb and close still take a curl each. The timing model's
# drain_timeout_leaves_a_poll_after_nolb_wait refuses the same.
before_poll="$((2 * CURL_MAX_TIME))"
before_poll_what="2 x CURL_MAX_TIME"
if [ "$DRAIN_ORDER" = lb-first ]; then
    before_poll="$ENDPOINT_SYNC_WAIT + $NOLB_WAIT + $before_poll"
    before_poll_what="ENDPOINT_SYNC_WAIT + NOLB_WAIT + $before_poll_what"
fi
if ! awk -v d="$DRAIN_TIMEOUT" -v c="$CURL_MAX_TIME" -v w="$NOLB_WAIT" \
    -v e="$ENDPOINT_SYNC_WAIT" -v o="$DRAIN_ORDER" \
    'BEGIN { exit !(d + 0 > 2 * c + (o == "lb-first" ? w + e : 0)) }'; then
    bad_setting DRAIN_TIMEOUT "$DRAIN_TIMEOUT" \
        "more than $before_poll_what ($before_poll s), or the poll never runs"
fi

# one clock, in milliseconds: a deadline in whole seconds would end the poll up to
# 1 s early; the logged `elapsed` stays in whole seconds
START_MS=$(date +%s%3N)
START_TS=$((START_MS / 1000))

# do_curl STEP MAX_TIME ARGS...: one best-effort request; failures are logged, not fatal.
do_curl() {
    step=$1
    max_time=$2
    shift 2
    out=$(curl -sS -f -m "$max_time" "$@" 2>&1)
    rc=$?
    if [ "$rc" -ne 0 ]; then
        log "level=warn step=$step msg=curl_failed rc=$rc url=\"$*\" output=\"$(printf '%s' "$out" | tr '\n"' ' _')\""
    else
        log "level=info step=$step msg=ok url=\"$*\""
    fi
    return "$rc"
}

# read_active MAX_TIME: print the summed data-plane gauge; fail when it is unknown
# (admin unreachable, or no line names a stat the filter matches). Envoy applies the
# filter, but whatever answers on ENVOY_ADMIN may not: a line counts only when its
# name matches the filter itself (ENVIRON, not -v: awk would eat the regex's escapes).
read_active() {
    stats=$(curl -sf -m "$1" -G --data-urlencode "filter=${ACTIVE_STATS_FILTER}" \
        "${ENVOY_ADMIN}/stats" 2>/dev/null) || return 1
    printf '%s\n' "$stats" | STAT_NAME_RE="$ACTIVE_STATS_FILTER" awk -F': ' '
        NF == 2 && $1 ~ ENVIRON["STAT_NAME_RE"] && $2 ~ /^[0-9]+$/ { n++; sum += $2 }
        END { if (n == 0) exit 1; print sum }'
}

log "level=info step=0 msg=start order=${DRAIN_ORDER} drain_timeout=${DRAIN_TIMEOUT} poll_interval=${POLL_INTERVAL} lb_buffer=${LB_BUFFER} filter=\"${ACTIVE_STATS_FILTER}\""

if [ "$DRAIN_ORDER" = lb-first ]; then
    # [0] nothing changes until no node's own traffic can reach this pod any more
    log "level=info step=0 msg=endpoint_sync_wait seconds=${ENDPOINT_SYNC_WAIT}"
    sleep "$ENDPOINT_SYNC_WAIT"
    # [1] stop new LB traffic without touching the sessions (404 -> HAProxy NOLB).
    do_curl 1 "$CURL_MAX_TIME" -X POST "${HC_URL}/nolb" || true
    # [1b] HAProxy sees the 404 at its next check (the timing model checks the margin).
    log "level=info step=1b msg=nolb_wait seconds=${NOLB_WAIT}"
    sleep "$NOLB_WAIT"
else
    # [1] open the drain window: the FSM leaves OPEN, both probes still pass.
    do_curl 1 "$CURL_MAX_TIME" -X POST "${HC_URL}/drain" || true
fi

# [2] graceful listener drain. skip_exit keeps the listeners after --drain-time-s
# (the LB may still send requests here, see above); Envoy itself never exits on a
# drain (docs/design.md), pilot-agent stops it after terminationDrainDuration.
do_curl 2 "$CURL_MAX_TIME" -X POST "${ENVOY_ADMIN}/drain_listeners?graceful&skip_exit" || true

# [3] wait for zero in-flight requests on the gateway's data plane.
deadline_ms=$((START_MS + DRAIN_TIMEOUT * 1000))
outcome=timeout
while :; do
    now_ms=$(date +%s%3N)
    now=$((now_ms / 1000))
    remaining_ms=$((deadline_ms - now_ms))
    if [ "$remaining_ms" -le 0 ]; then
        break
    fi
    max_time=$CURL_MAX_TIME
    if [ "$remaining_ms" -lt $((CURL_MAX_TIME * 1000)) ]; then
        # curl takes fractions of a second
        max_time=$((remaining_ms / 1000)).$(printf '%03d' $((remaining_ms % 1000)))
    fi
    if active=$(read_active "$max_time"); then
        log "level=info step=3 msg=poll active=${active} elapsed=$((now - START_TS))"
        if [ "$active" -eq 0 ]; then
            outcome=drained
            break
        fi
    else
        log "level=warn step=3 msg=active_unknown elapsed=$((now - START_TS))"
    fi
    sleep "$POLL_INTERVAL"
done
if [ "$outcome" = drained ]; then
    log "level=info step=3 msg=drained elapsed=$(($(date +%s) - START_TS))"
else
    log "level=warn step=3 msg=drain_timeout_exceeded elapsed=$(($(date +%s) - START_TS))"
fi

# [4] fail HAProxy's check: /health_check.html answers 503 from now on.
do_curl 4 "$CURL_MAX_TIME" -X POST "${HC_URL}/close-lb" || true

# [5] let HAProxy see it (fall x inter + check timeout < LB_BUFFER, checked by the
# timing model) before the endpoint goes.
log "level=info step=5 msg=lb_buffer seconds=${LB_BUFFER}"
sleep "$LB_BUFFER"

# [6] fail readiness: /health answers 503, the EndpointSlice drops the pod.
do_curl 6 "$CURL_MAX_TIME" -X POST "${HC_URL}/close" || true

# [7]
log "level=info step=7 msg=done outcome=${outcome} elapsed=$(($(date +%s) - START_TS))"
exit 0
