// Command kubelet-podresources serves the kubelet's PodResources API on a unix socket with the
// kubelet's own code, for the node agent's client tests (tests/realk8s/test_kubelet_podresources.py).
// Test infrastructure only, never product code; built by scripts/real-k8s.sh build-podresources.
//
// What runs is k8s.io/kubernetes/pkg/kubelet/server.ListenAndServePodResources, the function the
// kubelet itself calls: its gRPC server with the kubelet's rate limiter (pkg/kubelet/apis/grpc,
// podresources.DefaultQPS and DefaultBurstTokens), the v1 and v1alpha1 servers of
// pkg/kubelet/apis/podresources, and the kubelet's unix-socket listener (k8s.io/cri-client's
// CreateListener: unlink, create on a temp name, rename). Only the providers, which the kubelet
// backs with its pod manager and container manager, answer here from a JSON state file that is
// read again on every call, so a test can change the node between calls:
//
//	{"pods": [{"namespace": "ml", "name": "train", "uid": "u1",
//	           "containers": [{"name": "main", "devices": {"nvidia.com/gpu": ["GPU-a"]},
//	                           "cpu_ids": [1, 2]}]}],
//	 "allocatable": {"nvidia.com/gpu": ["GPU-a", "GPU-b"]},
//	 "allocatable_cpu_ids": [0, 1, 2, 3],
//	 "delay_seconds": 0}
//
// delay_seconds: the pods provider (List) and the devices provider (GetAllocatableResources)
// sleep that long before answering, as a kubelet stuck behind a lock would, so a client
// deadline can be tested.
//
// Usage: kubelet-podresources --socket PATH --state FILE
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	podresourcesapi "k8s.io/kubelet/pkg/apis/podresources/v1"
	"k8s.io/kubernetes/pkg/kubelet/apis/podresources"
	kubeletserver "k8s.io/kubernetes/pkg/kubelet/server"
)

type containerState struct {
	Name    string              `json:"name"`
	Devices map[string][]string `json:"devices"`
	CPUIDs  []int64             `json:"cpu_ids"`
}

type podState struct {
	Namespace  string           `json:"namespace"`
	Name       string           `json:"name"`
	UID        string           `json:"uid"`
	Containers []containerState `json:"containers"`
}

type nodeState struct {
	Pods              []podState          `json:"pods"`
	Allocatable       map[string][]string `json:"allocatable"`
	AllocatableCPUIDs []int64             `json:"allocatable_cpu_ids"`
	DelaySeconds      float64             `json:"delay_seconds"`
}

// node implements every provider of podresources.PodResourcesProviders from the state file.
// A List reads the file once (GetActivePods, its first provider call) and answers the
// per-container calls that follow from that snapshot, so one answer is always consistent.
type node struct {
	path string
	mu   sync.Mutex
	last nodeState
}

// load reads the state file; a call (not the check at start) then waits delay_seconds.
func (n *node) load() nodeState {
	state := n.read()
	if state.DelaySeconds > 0 {
		time.Sleep(time.Duration(state.DelaySeconds * float64(time.Second)))
	}
	return state
}

func (n *node) read() nodeState {
	var state nodeState
	data, err := os.ReadFile(n.path)
	if err == nil {
		err = json.Unmarshal(data, &state)
	}
	if err != nil {
		// A test wrote a broken file: fail loudly rather than answer an empty node.
		klog.Fatalf("reading state %s: %v", n.path, err)
	}
	n.mu.Lock()
	n.last = state
	n.mu.Unlock()
	return state
}

func (n *node) snapshot() nodeState {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.last
}

func (n *node) container(podUID, name string) *containerState {
	for _, pod := range n.snapshot().Pods {
		if pod.UID != podUID {
			continue
		}
		for i := range pod.Containers {
			if pod.Containers[i].Name == name {
				return &pod.Containers[i]
			}
		}
	}
	return nil
}

func apiPod(p podState) *v1.Pod {
	pod := &v1.Pod{}
	pod.Namespace, pod.Name, pod.UID = p.Namespace, p.Name, types.UID(p.UID)
	for _, c := range p.Containers {
		pod.Spec.Containers = append(pod.Spec.Containers, v1.Container{Name: c.Name})
	}
	pod.Status.Phase = v1.PodRunning
	return pod
}

// PodsProvider (the kubelet: its pod manager).

func (n *node) GetActivePods() []*v1.Pod {
	var pods []*v1.Pod
	for _, p := range n.load().Pods {
		pods = append(pods, apiPod(p))
	}
	return pods
}

func (n *node) GetPods() []*v1.Pod { return n.GetActivePods() }

func (n *node) GetPodByName(namespace, name string) (*v1.Pod, bool) {
	for _, p := range n.load().Pods {
		if p.Namespace == namespace && p.Name == name {
			return apiPod(p), true
		}
	}
	return nil, false
}

// DevicesProvider (the kubelet: its container manager over the device manager).

func (n *node) UpdateAllocatedDevices() {}

func (n *node) GetDevices(podUID, containerName string) []*podresourcesapi.ContainerDevices {
	c := n.container(podUID, containerName)
	if c == nil {
		return nil
	}
	return containerDevices(c.Devices)
}

func (n *node) GetAllocatableDevices() []*podresourcesapi.ContainerDevices {
	return containerDevices(n.load().Allocatable)
}

// containerDevices is the kubelet's containerDevicesFromResourceDeviceInstances
// (pkg/kubelet/cm/container_manager.go, unexported) for devices without topology: the device
// manager keeps a map of resource -> device ID -> device, and the container manager answers
// one ContainerDevices per device ID, in map order (random), never one per resource.
func containerDevices(devices map[string][]string) []*podresourcesapi.ContainerDevices {
	instances := map[string]map[string]struct{}{}
	for resource, ids := range devices {
		if len(ids) == 0 {
			continue
		}
		instances[resource] = map[string]struct{}{}
		for _, id := range ids {
			instances[resource][id] = struct{}{}
		}
	}
	var out []*podresourcesapi.ContainerDevices
	for resource, ids := range instances {
		for id := range ids {
			out = append(out, &podresourcesapi.ContainerDevices{ResourceName: resource, DeviceIds: []string{id}})
		}
	}
	return out
}

// CPUsProvider (the kubelet: the CPU manager's exclusive CPUs).

func (n *node) GetCPUs(podUID, containerName string) []int64 {
	if c := n.container(podUID, containerName); c != nil && c.CPUIDs != nil {
		return c.CPUIDs
	}
	return []int64{}
}

func (n *node) GetAllocatableCPUs() []int64 {
	if ids := n.snapshot().AllocatableCPUIDs; ids != nil {
		return ids
	}
	return []int64{}
}

// MemoryProvider and DynamicResourcesProvider: a kubelet without the memory manager and
// without DRA claims answers empty lists.

func (n *node) GetMemory(string, string) []*podresourcesapi.ContainerMemory {
	return []*podresourcesapi.ContainerMemory{}
}

func (n *node) GetAllocatableMemory() []*podresourcesapi.ContainerMemory {
	return []*podresourcesapi.ContainerMemory{}
}

func (n *node) GetDynamicResources(*v1.Pod, *v1.Container) []*podresourcesapi.DynamicResource {
	return []*podresourcesapi.DynamicResource{}
}

func main() {
	socket := flag.String("socket", "", "unix socket path to serve on (recreated, as the kubelet does)")
	statePath := flag.String("state", "", "JSON state file, read on every call")
	klog.InitFlags(nil)
	flag.Parse()
	if *socket == "" || *statePath == "" {
		fmt.Fprintln(os.Stderr, "usage: kubelet-podresources --socket PATH --state FILE")
		os.Exit(2)
	}
	n := &node{path: *statePath}
	n.read() // a broken state file fails at start, not on the first call
	providers := podresources.PodResourcesProviders{
		Pods: n, Devices: n, Cpus: n, Memory: n, DynamicResources: n,
	}
	// The kubelet passes util.LocalEndpoint(dir, "kubelet"): a unix:// URL.
	kubeletserver.ListenAndServePodResources(context.Background(), "unix://"+*socket, providers)
}
