// Observes: the Go runtime's nondeterminism -- goroutine scheduling (eight goroutines of unequal work finishing into a channel, a mutex-guarded log), select among ready channels (the runtime picks at random), map iteration order (randomised per map from the runtime's seed, AT_RANDOM), time.Now and time.Since, timers and a ticker against a sleeping goroutine, crypto/rand, math/rand seeded from the clock, runtime.NumCPU, os.Getpid and the host name. Cage: handled -- threads serialised (the runtime's sysmon thread and its preemption signals included), AT_RANDOM and getrandom from the seed, the logical clock, one CPU.
package main

import (
	crand "crypto/rand"
	"fmt"
	"math/rand"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

func main() {
	start := time.Now()
	fmt.Println("cpus", runtime.NumCPU(), "now", start.UnixNano())
	random := make([]byte, 8)
	if _, err := crand.Read(random); err != nil {
		fmt.Println("crypto/rand failed:", err)
		os.Exit(1)
	}
	fmt.Printf("crypto/rand %x\n", random)
	fmt.Println("math/rand from the clock", rand.New(rand.NewSource(start.UnixNano())).Int63())

	// Map iteration order: the runtime starts each range at a random
	// bucket and offset.
	set := map[string]int{}
	for _, word := range strings.Fields("alpha bravo charlie delta echo foxtrot golf hotel india juliet") {
		set[word] = len(word)
	}
	order := []string{}
	for word := range set {
		order = append(order, word)
	}
	fmt.Println("map order", strings.Join(order, " "))

	// Goroutines of unequal work: the order they finish in, and the order
	// they took a mutex in.
	var lock sync.Mutex
	taken := []int{}
	done := make(chan int, 8)
	var group sync.WaitGroup
	for i := 0; i < 8; i++ {
		group.Add(1)
		go func(i int) {
			defer group.Done()
			sum := 0
			for j := 0; j < 300000*(8-i); j++ {
				sum += j % (i + 3)
				if j%50000 == 0 {
					lock.Lock()
					taken = append(taken, i)
					lock.Unlock()
				}
			}
			done <- i
		}(i)
	}
	finished := []int{}
	for i := 0; i < 8; i++ {
		finished = append(finished, <-done)
	}
	group.Wait()
	fmt.Println("finished", finished)
	fmt.Println("mutex order", taken)

	// Select among channels that are all ready: the runtime picks one at
	// random each time.
	a, b, c := make(chan int, 16), make(chan int, 16), make(chan int, 16)
	for i := 0; i < 16; i++ {
		a <- i
		b <- i
		c <- i
	}
	picks := ""
	for i := 0; i < 16; i++ {
		select {
		case <-a:
			picks += "a"
		case <-b:
			picks += "b"
		case <-c:
			picks += "c"
		}
	}
	fmt.Println("select picks", picks)

	// A ticker and a timer against a sleeping goroutine.
	ticker := time.NewTicker(2 * time.Millisecond)
	timer := time.NewTimer(7 * time.Millisecond)
	slept := make(chan time.Duration)
	go func() {
		before := time.Now()
		time.Sleep(5 * time.Millisecond)
		slept <- time.Since(before)
	}()
	events := []string{}
	for len(events) < 5 {
		select {
		case <-ticker.C:
			events = append(events, "tick")
		case <-timer.C:
			events = append(events, "timer")
		case d := <-slept:
			events = append(events, fmt.Sprintf("slept %d", d.Nanoseconds()))
		}
	}
	ticker.Stop()
	fmt.Println("timers", strings.Join(events, ", "))

	sizes := []int{}
	for _, n := range set {
		sizes = append(sizes, n)
	}
	sort.Ints(sizes)
	host, _ := os.Hostname()
	fmt.Println("sizes", sizes, "host", host, "pid", os.Getpid())
	fmt.Println("elapsed", time.Since(start).Nanoseconds())
}
