//! Shared helpers for the end-to-end tests. They expect the cluster from `make cluster-up`:
//! `KUBECONFIG` (default `/var/lib/kwarm-cluster/kubeconfig`) and the registry on 127.0.0.1:5000.
