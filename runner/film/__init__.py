"""The film as data: manifest, prompt composition, graph, plan. Pure: no disk writes, no
network, no processes; imports nothing of runner's but digest and errors."""
