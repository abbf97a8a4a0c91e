"""A Python worker without PyTorch: bootstraps against its agent and prints its BootstrapInfo.
With an argument ROOT, the agent's files are ROOT/etb_demo_rank{N}_*.lmdb."""
import sys

from etha_tensor_bus import bootstrap_client, version


def main():
    naming = None
    if len(sys.argv) > 1:
        root = sys.argv[1]
        naming = lambda rank: (f"{root}/etb_demo_rank{rank}_command.lmdb", f"{root}/etb_demo_rank{rank}_state.lmdb")  # noqa: E731
    client, info = bootstrap_client(naming, connection_timeout=30.0)
    with client:
        print(f"etha-tensor-bus {version()} (Python): worker bootstrapped")
        for field, value in vars(info).items():
            print(f"  {field:18} = {value}")
        print(f"  heartbeat age      = {client.heartbeat_age() * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
