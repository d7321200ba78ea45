//! A real kubelet with containerd joined to the test cluster (owned by the node-exec work).
