import os
import sys

from hetfaas import submitit  # was: import submitit


class Task:
    def __call__(self):
        import torch
        import torch.distributed

        dist_env = submitit.helpers.TorchDistributedEnvironment().export()
        print(f"master: {dist_env.master_addr}:{dist_env.master_port}")
        print(f"rank: {dist_env.rank}, world size: {dist_env.world_size}")
        torch.distributed.init_process_group(backend="gloo")  # CPU: gloo instead of nccl
        assert dist_env.rank == torch.distributed.get_rank()
        assert dist_env.world_size == torch.distributed.get_world_size()
        tensor = dist_env.rank * torch.ones(1)
        torch.distributed.all_reduce(tensor)
        torch.distributed.destroy_process_group()
        if dist_env.rank == 0:
            return list(tensor.tolist())
        return None

    def checkpoint(self):
        return submitit.helpers.DelayedSubmission(self)


def main():
    folder = os.environ.get("EXAMPLE_FOLDER", "log_test")
    executor = submitit.AutoExecutor(folder=folder, cluster=os.environ.get("EXAMPLE_CLUSTER"))
    executor.update_parameters(
        nodes=1, tasks_per_node=2, cpus_per_task=1, timeout_min=2, slurm_partition="debug"
    )
    job = executor.submit(Task())
    submitit.helpers.monitor_jobs([job])
    print(job.results()[0])
    assert job.results() == [[1.0], None]
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
