"""The Kubernetes surface every component shares: connecting, paging and one-line errors
(``api``), the calls each component makes as typed Protocols (``calls``), the GPU-pod
predicate (``gpus``), and objects in the API's JSON shapes, read and built (``objects``)."""
