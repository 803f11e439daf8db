"""The local lab: a small stand-in for kubelet and kube-proxy, with only what the
experiment depends on. It runs the pods of the *rendered* manifests on loopback.

Modelled, each from a Kubernetes fact:
- Containers run with their manifest env; fieldRef env (metadata.name, status.podIP,
  ...) is filled in as the Downward API does.
- Readiness and liveness probes: httpGet every periodSeconds (1 s timeout), not ready /
  failed after failureThreshold consecutive failures, ready again on one success. A pod
  is ready when every container is. A failed liveness probe restarts the container,
  except in a terminating pod (kubelet restarts nothing there).
- Termination (kubelet): the pod is marked terminating at once; every container stops
  in parallel: a container with a preStop hook runs it first and gets SIGTERM when it
  ends, a container without one gets SIGTERM at once (so istio-proxy starts draining in
  parallel with hc's preStop, docs/design.md); whatever still runs at
  terminationGracePeriodSeconds is SIGKILLed, hooks included; a hook that overruns the
  grace gets kubelet's one-off 2 s extension, then its container SIGTERM and SIGKILL.
- EndpointSlice conditions: ready = ready and not terminating; serving = ready (the
  readiness probes) whether terminating or not; terminating.
- NodePort with externalTrafficPolicy: Local (kube-proxy): a node forwards only to
  its own pods; ready ones, else serving-and-terminating ones (KEP-1669, since 1.28);
  with none it drops new connections (the client times out) while established ones
  live on (conntrack). Traffic that starts on the node itself goes to any ready
  endpoint in the cluster, whatever the policy (kubeproxy.NodePort).

Lab-only translations, because pods share the host's loopback instead of having their
own network namespace: a pod's "all interfaces" and its 127.0.0.1 become its own
127.x pod IP (in env like HC_ADDR, in preStop commands, and HC_URL / ENVOY_ADMIN for the
drain script); images map to our programs through one explicit table
(`kubelet.PROGRAMS`: proxyv2 -> the pilot-agent stand-in with Envoy, igw-hc -> hc,
igw-backend -> backend); /opt/hc/graceful-drain.sh is the one installed with hc.
"""
