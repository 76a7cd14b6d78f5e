// kindcheck decodes a kinelab-generated kind cluster config STRICTLY into the published types:
//
//   - the document into sigs.k8s.io/kind/pkg/apis/config/v1alpha4.Cluster,
//   - every kubeadmConfigPatches entry (cluster-wide and per node) into
//     k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/v1beta4 ClusterConfiguration, InitConfiguration or
//     JoinConfiguration, or into k8s.io/kubelet/config/v1beta1 KubeletConfiguration, chosen by the patch's
//     own apiVersion and kind,
//   - every kubeadm static-pod patch file kinelab mounts into a node, into k8s.io/api/core/v1.Pod.
//
// Strict means what the Kubernetes API machinery calls strict: duplicate YAML keys, unknown fields and
// fields spelled in another case are errors (sigs.k8s.io/yaml.YAMLToJSONStrict, then
// sigs.k8s.io/json.UnmarshalStrict, which is case-sensitive unlike encoding/json).
//
// Input on stdin, one JSON object: {"cluster": "<kind config YAML>", "podPatches": {"<name>": "<YAML>"}}.
// Output on stdout: a JSON array of error strings (empty when everything decodes). Exit 0 either way;
// exit 2 only when the input itself cannot be read.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	corev1 "k8s.io/api/core/v1"
	kubelet "k8s.io/kubelet/config/v1beta1"
	kubeadm "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/v1beta4"
	sigsjson "sigs.k8s.io/json"
	kind "sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/yaml"
)

type input struct {
	Cluster    string            `json:"cluster"`
	PodPatches map[string]string `json:"podPatches"`
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// strict decodes YAML into out and returns every problem found.
func strict(doc string, out interface{}) []string {
	data, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return []string{err.Error()}
	}
	strictErrs, err := sigsjson.UnmarshalStrict(data, out, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return []string{err.Error()}
	}
	var problems []string
	for _, e := range strictErrs {
		problems = append(problems, e.Error())
	}
	return problems
}

func checkKubeadmPatch(where, patch string) []string {
	var meta typeMeta
	data, err := yaml.YAMLToJSONStrict([]byte(patch))
	if err != nil {
		return []string{fmt.Sprintf("%s: %v", where, err)}
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return []string{fmt.Sprintf("%s: %v", where, err)}
	}
	if meta.APIVersion == kubelet.SchemeGroupVersion.String() && meta.Kind == "KubeletConfiguration" {
		var problems []string
		for _, p := range strict(patch, &kubelet.KubeletConfiguration{}) {
			problems = append(problems, fmt.Sprintf("%s (%s): %s", where, meta.Kind, p))
		}
		return problems
	}
	want := kubeadm.SchemeGroupVersion.String()
	if meta.APIVersion != want {
		return []string{fmt.Sprintf("%s: apiVersion %q, want %q", where, meta.APIVersion, want)}
	}
	var target interface{}
	switch meta.Kind {
	case "ClusterConfiguration":
		target = &kubeadm.ClusterConfiguration{}
	case "InitConfiguration":
		target = &kubeadm.InitConfiguration{}
	case "JoinConfiguration":
		target = &kubeadm.JoinConfiguration{}
	default:
		return []string{fmt.Sprintf("%s: kind %q is not a kubeadm %s configuration kinelab patches", where, meta.Kind, want)}
	}
	var problems []string
	for _, p := range strict(patch, target) {
		problems = append(problems, fmt.Sprintf("%s (%s): %s", where, meta.Kind, p))
	}
	return problems
}

func check(in input) []string {
	problems := []string{}
	var cluster kind.Cluster
	for _, p := range strict(in.Cluster, &cluster) {
		problems = append(problems, "kind Cluster: "+p)
	}
	if cluster.APIVersion != "kind.x-k8s.io/v1alpha4" || cluster.Kind != "Cluster" {
		problems = append(problems, fmt.Sprintf("kind Cluster: apiVersion/kind %q/%q, want kind.x-k8s.io/v1alpha4/Cluster",
			cluster.APIVersion, cluster.Kind))
	}
	for i, patch := range cluster.KubeadmConfigPatches {
		problems = append(problems, checkKubeadmPatch(fmt.Sprintf("kubeadmConfigPatches[%d]", i), patch)...)
	}
	for n, node := range cluster.Nodes {
		for i, patch := range node.KubeadmConfigPatches {
			problems = append(problems, checkKubeadmPatch(fmt.Sprintf("nodes[%d].kubeadmConfigPatches[%d]", n, i), patch)...)
		}
	}
	names := make([]string, 0, len(in.PodPatches))
	for name := range in.PodPatches {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		var pod corev1.Pod
		for _, p := range strict(in.PodPatches[name], &pod) {
			problems = append(problems, fmt.Sprintf("pod patch %s: %s", name, p))
		}
	}
	return problems
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kindcheck: cannot read stdin:", err)
		os.Exit(2)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		fmt.Fprintln(os.Stderr, "kindcheck: stdin is not {\"cluster\": YAML, \"podPatches\": {...}}:", err)
		os.Exit(2)
	}
	out, _ := json.Marshal(check(in))
	fmt.Println(string(out))
}
